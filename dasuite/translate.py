"""``dasuite translate``: every image of a dataset through a trained CycleGAN generator ("cycleGTA"), see
``docs/translate.md``.

Output layout. A file dataset (gta5, synthia, cityscapes, folder) is written as the images of a ``translated``
dataset: ``<out>/<path of the parent image relative to the parent's image folder>`` with the extension ``.png``
(lossless; the ``translated`` entry needs ``image_ext: .png`` only when the parent's images are not PNGs). The
generated ``toy`` dataset has no files to mirror: it is written as a ``folder`` dataset, ``<out>/images/<name>``
and ``<out>/labels/<name>`` (8-bit train ids, 255 = ignore). The entry to paste into an experiment is printed and
stored in the manifest.

Inference. Images are translated at the resolution of the original file (any training resize is ignored),
batched by size on the device: ``x = u8 / 127.5 - 1`` (B x 3 x H x W), reflection-padded to a multiple of 4,
``y = G(x)`` cropped back, written as ``round((clamp(y, -1, 1) + 1) * 127.5)``. With ``tile`` set, or when the
longer side exceeds ``max_side``, ``G`` runs on overlapping windows blended linearly (``dasuite.models.tiling``).
One device process; decoding in loader workers; PNG encoding in writer processes (PIL holds the GIL while it
encodes to memory, so threads would not run in parallel).

Files and resume. Every file is encoded in memory, hashed (sha256), written to a temp file in its folder and
renamed over the target (``dasuite.fileio.atomic_write``), so a killed run never leaves a partial file under the
final name; the temp files of a killed run are removed by the next one. Decoding and writer processes die with this
process (``dasuite.procs``), and a Ctrl-C stops them with one message.
``translate_manifest.json`` (also atomic; rewritten every ``FLUSH_SECONDS`` and at the end) holds the settings,
the checkpoint's sha256 and one sha256 per finished file. A rerun skips items whose files match the manifest's
hashes (and files absent from the manifest that decode at the expected size, i.e. written just before a kill,
except in a folder whose ``overwrite`` pass has not finished: there they may be the replaced translation's, which
the manifest's ``unlisted_files_trusted: false`` records), rewrites everything else, and refuses an output folder
whose manifest came from other settings unless ``overwrite``. ``verify`` also decodes every listed file and checks
its size.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import TypeAdapter, ValidationError
from torch import nn
from tqdm.auto import tqdm

import dasuite
from dasuite.config.load import apply_override, load_config, parse_override, read_yaml
from dasuite.config.schema import DatasetEntry, ExperimentConfig
from dasuite.data import build_dataset
from dasuite.data.base import DATASETS, DatasetConfig, SegDataset
from dasuite.data.io import image_size
from dasuite.data.pairs import PairDataset
from dasuite.data.toy import ToyDataset
from dasuite.data.translated import TranslatedConfig
from dasuite.engine.accelerator import make_accelerator
from dasuite.errors import DasuiteError
from dasuite.fileio import atomic_write, load_weights, remove_stale_temps, write_json
from dasuite.methods.cyclegan import build_generators
from dasuite.models.tiling import Tiling, pad_to_multiple, run_tiled
from dasuite.procs import worker_init
from dasuite.rundir import RunDir

if TYPE_CHECKING:
    from accelerate import Accelerator

DIRECTIONS = ("source_to_target", "target_to_source")
MANIFEST = "translate_manifest.json"
PARENTS = ("gta5", "synthia", "cityscapes", "folder")  # file datasets a `translated` entry can mirror
GENERATED = ("toy",)  # datasets written as a `folder` dataset (images + labels)
FLUSH_SECONDS = 30.0
PNG_LEVEL = 1  # zlib level: lossless at any level; 1 writes several times faster than PIL's default 6
_ENTRY: TypeAdapter = TypeAdapter(DatasetEntry)


# ------------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def translate_images(generator: nn.Module, images: torch.Tensor, tiling: Tiling = Tiling(),
                     accelerator: Optional[Accelerator] = None) -> torch.Tensor:
    """uint8 B x 3 x H x W -> translated uint8 B x 3 x H x W (module docstring), on ``images``' device."""
    height, width = images.shape[-2:]
    x = pad_to_multiple(images.float() / 127.5 - 1.0)
    window = tiling.window(height, width)
    with accelerator.autocast() if accelerator is not None else nullcontext():
        y = generator(x).float() if window is None else run_tiled(generator, x, window, tiling.overlap)
    return ((y[..., :height, :width].clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------- run and data
def load_run(run: Path, checkpoint: str = "last", direction: str = "source_to_target"
             ) -> tuple[ExperimentConfig, nn.Module, Path]:
    """A cyclegan run's config, the generator for ``direction`` (weights from ``checkpoint``: ``last`` or a path,
    eval mode, CPU) and the checkpoint path."""
    if direction not in DIRECTIONS:
        raise DasuiteError(f"unknown --direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    run_dir = RunDir(Path(run))
    if not run_dir.config.is_file():
        raise DasuiteError(f"{str(run)!r} is not a dasuite run directory (no config.yaml)")
    method = (read_yaml(run_dir.config).get("method") or {}).get("name", "source_only")
    if method != "cyclegan":
        raise DasuiteError(f"run {str(run)!r} was trained with method {method!r}; translate needs a cyclegan run "
                           f"(method.name: cyclegan, e.g. experiments/toy/cyclegan.yaml)")
    path = run_dir.last if checkpoint == "last" else Path(checkpoint)
    if not path.is_file():
        hint = " (train it first, or pass --checkpoint PATH)" if checkpoint == "last" else ""
        raise DasuiteError(f"checkpoint {str(path)!r} does not exist{hint}")
    cfg = load_config(run_dir.config)
    generators = build_generators(cfg.method)
    result = generators.load_state_dict(load_weights(path), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DasuiteError(f"{path}: weights do not match the run's generators (missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]})")
    return cfg, generators[direction].eval(), path


def input_entry(cfg: ExperimentConfig, direction: str, dataset: Optional[str] = None,
                overrides: Sequence[str] = ()) -> DatasetConfig:
    """The dataset to translate: the run's ``data.source`` (source_to_target) or ``data.target``, or the entry
    named ``dataset`` (the run's own entry, or the mix member, of that name when there is one), with ``key=value``
    ``overrides``; training keys (subset, rcs, augment, resize) are dropped: every image at its file's size."""
    role = "source" if direction == "source_to_target" else "target"
    own = getattr(cfg.data, role)
    members = own.mix if own is not None and own.name == "mix" else [own] if own is not None else []
    if dataset is None:
        if own is None or own.name == "mix":
            what = "is a mix" if own is not None else "is not set"
            raise DasuiteError(f"the run's data.{role} {what}; name the dataset to translate with --input-dataset "
                               f"NAME and its keys (e.g. root=... split=...)")
        dataset = own.name
    DATASETS.get(dataset)
    same = [m for m in members if m.name == dataset]
    raw = same[0].model_dump(mode="json", exclude_unset=True) if len(same) == 1 else {"name": dataset}
    for key in ("subset", "rcs", "augment", "resize"):
        raw.pop(key, None)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    try:
        return _ENTRY.validate_python(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'entry'}: {e['msg']}" for e in err.errors())
        raise DasuiteError(f"input dataset {dataset!r}: {problems}") from None


@dataclass(frozen=True)
class Item:
    """One input image: dataset ``index``, the files it produces (relative to the output folder; the image first,
    then, for folder output, its label) and the image's (width, height)."""

    index: int
    outputs: tuple[str, ...]
    size: tuple[int, int]


def plan(dataset: SegDataset, entry: DatasetConfig, out: Path) -> tuple[list[Item], dict]:
    """The items to write and the dataset entry that reads the result back (module docstring)."""
    if isinstance(dataset, ToyDataset):
        stems = [Path(dataset.name(i)).stem for i in range(len(dataset))]
        items = [Item(i, (f"images/{s}.png", f"labels/{s}.png"), tuple(entry.size)) for i, s in enumerate(stems)]
        classes = dataset.classes
        return items, {"name": "folder", "root": str(out.resolve()), "split": entry.split, "images_dir": "images",
                       "labels_dir": "labels", "classes": list(classes.names),
                       "palette": [list(c) for c in classes.palette]}
    files = getattr(dataset, "files", None) if isinstance(dataset, PairDataset) else None
    if entry.name not in PARENTS or not files:
        raise DasuiteError(f"input dataset {entry.name!r} has no image files to mirror; translate reads "
                           f"{', '.join(PARENTS)} (written as a translated dataset) and {', '.join(GENERATED)} "
                           f"(written as a folder dataset)")
    image_dir = dataset.image_dir.resolve()
    if out.resolve() == image_dir or image_dir in out.resolve().parents:
        raise DasuiteError(f"--out {str(out)!r} lies inside the input images' folder {str(image_dir)!r}; "
                           f"choose a folder outside it")
    items = [Item(i, (image.relative_to(dataset.image_dir).with_suffix(".png").as_posix(),), image_size(image))
             for i, (image, _) in enumerate(files)]
    parent = {"name": entry.name, "root": entry.root, "split": entry.split,
              **entry.model_dump(mode="json", exclude_defaults=True)}
    translated = {"name": "translated", "parent": parent, "images_root": str(out.resolve())}
    if any(image.suffix != ".png" for image, _ in files):
        translated["image_ext"] = ".png"
    TranslatedConfig.model_validate(translated)
    return items, translated


class _Inputs(torch.utils.data.Dataset):
    """Decoded inputs of ``items`` (worker side): (position, uint8 3 x H x W image, uint8 H x W label or None)."""

    def __init__(self, dataset: SegDataset, items: list[Item]) -> None:
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor, Optional[np.ndarray]]:
        index = self.items[j].index
        if isinstance(self.dataset, PairDataset):
            image, label = self.dataset.image_at(index), None
        else:
            image, label, _ = self.dataset.raw_pair(index)
        return j, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label


def _collate(batch: list) -> tuple[list[int], torch.Tensor, list]:
    return [b[0] for b in batch], torch.stack([b[1] for b in batch]), [b[2] for b in batch]


def size_batches(items: list[Item], todo: Iterable[int], batch_size: int) -> list[list[int]]:
    """Positions ``todo`` grouped by image size (first-seen order) and cut into batches of ``batch_size``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j in todo:
        groups.setdefault(items[j].size, []).append(j)
    return [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


# ------------------------------------------------------------------------------------------------- files
def write_png(array: np.ndarray, path: Path) -> str:
    """Encode ``array`` (H x W x 3 or H x W, uint8) as PNG, write it atomically to ``path``; returns its sha256."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def check_file(path: Path, size: tuple[int, int], sha: Optional[str], decode: bool) -> Optional[str]:
    """``path``'s sha256 if it is a finished file: equal to ``sha`` when given, and (when ``decode`` or no ``sha``)
    a complete image of ``size`` (width, height); else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if sha is not None and digest != sha:
        return None
    if decode or sha is None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.size != tuple(size):
                    return None
        except Exception:  # truncated / not an image: PIL raises OSError, SyntaxError, ValueError...
            return None
    return digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class Options:
    """How to translate: ``tiling``; ``batch_size`` images of one size per device call; ``num_workers`` decoding
    processes; ``writers`` processes that encode and write the PNGs (0: one thread of this process); ``verify``:
    decode every finished file too; ``overwrite``: replace a translation made with other settings."""

    tiling: Tiling = Tiling()
    batch_size: int = 4
    num_workers: int = 2
    writers: int = 4
    verify: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for key, low in (("batch_size", 1), ("num_workers", 0), ("writers", 0)):
            if getattr(self, key) < low:
                raise DasuiteError(f"--{key.replace('_', '-')} must be at least {low}, got {getattr(self, key)}")


class _Output:
    """The output folder's manifest: settings, and the sha256 of every file of the finished items."""

    def __init__(self, out: Path, items: list[Item], header: dict) -> None:
        self.out, self.items, self.done = out, items, set()
        self.manifest = {**header, "total": len(items), "count": 0, "complete": False, "files": {}}

    def record(self, j: int, shas: list[str]) -> None:
        self.manifest["files"].update(zip(self.items[j].outputs, shas))
        self.done.add(j)

    def save(self) -> dict:
        m = self.manifest
        m["count"], m["files"] = len(self.done), dict(sorted(m["files"].items()))
        m["complete"] = m["count"] == m["total"]
        write_json(m, self.out / MANIFEST)
        return m


def translate_dataset(generator: nn.Module, entry: DatasetConfig, out: Path, provenance: dict,
                      options: Options = Options()) -> dict:
    """Write ``entry``'s images translated by ``generator`` to ``out`` (module docstring); returns the manifest.
    ``provenance``: run, checkpoint, checkpoint_sha256 and direction, stored in (and compared with) the manifest."""
    accelerator = make_accelerator()
    if accelerator.num_processes > 1:
        raise DasuiteError("translate runs in one process (one device): start it without accelerate launch")
    out = Path(out)
    dataset = build_dataset(entry, None, resize_labels=False)
    items, dataset_entry = plan(dataset, entry, out)
    tiling = options.tiling
    identity = {"checkpoint_sha256": provenance["checkpoint_sha256"], "direction": provenance["direction"],
                "input_dataset": entry.model_dump(mode="json"),
                "tile": {"tile": tiling.tile, "overlap": tiling.overlap, "max_side": tiling.max_side}}
    previous, trust_unlisted = _previous_files(out / MANIFEST, identity, options.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, recursive=True)
    state = _Output(out, items, {"dasuite_version": dasuite.__version__, **provenance, **identity,
                                 "output": dataset_entry["name"], "dataset_entry": dataset_entry,
                                 "unlisted_files_trusted": trust_unlisted})

    def finished(item: Item) -> Optional[list[str]]:
        shas = [check_file(out / rel, item.size, previous.get(rel), options.verify)
                if rel in previous or trust_unlisted else None for rel in item.outputs]
        return None if None in shas else shas

    with ThreadPoolExecutor(max_workers=max(2, options.writers)) as checkers:
        for j, shas in enumerate(checkers.map(finished, items)):
            if shas is not None:
                state.record(j, shas)
    todo = [j for j in range(len(items)) if j not in state.done]
    state.save()  # the settings are on disk before any file is written
    with ProcessPoolExecutor(options.writers, initializer=worker_init) if options.writers else ThreadPoolExecutor(1) as pool:
        _translate_todo(generator.to(accelerator.device).eval(), dataset, todo, state, pool, accelerator, options)
    state.manifest["last_pass"] = {"written": len(todo), "skipped": len(items) - len(todo), "verified": options.verify}
    return state.save()


def _translate_todo(generator: nn.Module, dataset: SegDataset, todo: list[int], state: _Output, pool: Executor,
                    accelerator: Accelerator, options: Options) -> None:
    """Decode (loader workers), translate (device) and write (``pool``) the items at positions ``todo``; the
    manifest is saved every ``FLUSH_SECONDS`` and, after an error, with whatever the writers finished."""
    items, device = state.items, accelerator.device
    loader = torch.utils.data.DataLoader(
        _Inputs(dataset, items), batch_sampler=size_batches(items, todo, options.batch_size),
        num_workers=options.num_workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if options.num_workers else None)
    bar = tqdm(total=len(todo), desc="translate", unit="img", disable=not options.progress)
    pending: deque = deque()  # (position, future of the item's file hashes), in submission order
    last_save = time.monotonic()

    def collect(limit: int) -> None:
        while pending and (len(pending) > limit or pending[0][1].done()):
            j, future = pending.popleft()
            state.record(j, future.result())
            bar.update(1)

    try:
        for positions, images, labels in loader:
            fake = translate_images(generator, images.to(device, non_blocking=True), options.tiling, accelerator)
            fake = fake.permute(0, 2, 3, 1).cpu().numpy()  # one device -> host copy per batch
            for k, j in enumerate(positions):
                pending.append((j, pool.submit(_write_item, state.out, items[j], fake[k], labels[k])))
            collect(limit=2 * options.batch_size + options.writers)  # bounds the outputs held in memory
            if time.monotonic() - last_save > FLUSH_SECONDS:
                state.save()
                last_save = time.monotonic()
        collect(limit=0)
    finally:
        for j, future in pending:  # after an error: keep what the writers finished
            if future.exception() is None:
                state.record(j, future.result())
        bar.close()
        state.save()


def _write_item(out: Path, item: Item, image: np.ndarray, label: Optional[np.ndarray]) -> list[str]:
    shas = [write_png(image, out / item.outputs[0])]
    if len(item.outputs) > 1:
        shas.append(write_png(np.asarray(label, dtype=np.uint8), out / item.outputs[1]))
    return shas


def _previous_files(path: Path, identity: dict, overwrite: bool) -> tuple[dict[str, str], bool]:
    """The finished files an existing manifest lists, and whether files it does not list may be kept (those a
    killed run wrote after its last manifest save); refuses a manifest made with other settings."""
    if not path.is_file():
        return {}, True
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if overwrite:
            return {}, False
        raise DasuiteError(f"cannot read {str(path)!r} ({err}); delete it or pass --overwrite") from None
    differ = [key for key, value in identity.items() if old.get(key) != value]
    if not differ:  # after an interrupted --overwrite, unlisted files may be the replaced translation's
        return dict(old.get("files", {})), bool(old.get("unlisted_files_trusted", True))
    if overwrite:
        return {}, False
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in differ)
    raise DasuiteError(f"{str(path.parent)!r} holds a translation made with other settings ({shown}); choose "
                       f"another --out or pass --overwrite to replace it")


def translate(run: Path, out: Path, *, direction: str = "source_to_target", checkpoint: str = "last",
              input_dataset: Optional[str] = None, overrides: Sequence[str] = (), options: Options = Options()) -> dict:
    """The body of ``dasuite translate``: load the run's generator, pick the input dataset, translate it."""
    cfg, generator, path = load_run(Path(run), checkpoint, direction)
    entry = input_entry(cfg, direction, input_dataset, overrides)
    provenance = {"run": str(Path(run).resolve()), "checkpoint": str(path.resolve()),
                  "checkpoint_sha256": file_sha256(path), "direction": direction}
    return translate_dataset(generator, entry, Path(out), provenance, options)
