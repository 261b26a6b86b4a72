"""A training role (``data.source`` / ``data.target``) as one dataset: a single entry or a ``mix`` of entries, each
optionally restricted to a ``subset`` and/or sampled by rare class (``rcs``); see ``sampling.py``.

``TrainingData`` concatenates its members (member m owns global indices ``offsets[m] ..``) and builds the sampler
that realises the mix: a plain entry, or a mix with ``weights: size`` and no RCS, is an ordinary epoch-shuffled
concatenation (``InfiniteSampler``: every image once per epoch, so a mix samples proportionally to sizes); explicit
or ``equal`` weights, or any RCS member, use ``MixSampler`` (per batch element: dataset by weight, then that
dataset's own shuffled or rare-class stream). Items of a mix are stacked into one batch, so all members must
decode at one size, carry labels alike and share one class table; the role's ``augment`` applies to the batch.

Crop re-draws (DAFormer's rules, ``rcs.min_crop_ratio`` / ``rcs.cat_max_ratio``). The random crop normally happens
on the device (``DeviceAugment``: rescale, crop and flip in one warp), which sees images and labels but not the
class the sampler drew. So a role with a crop rule on any entry draws its geometry here, per item in the loader
workers, with the same functions (``augment.crop_matrix``, ``warp_labels``, ``warp_images``), and hands the engine
its ``augment`` without the geometric part (colour jitter and the strong part stay on the device). A candidate
is one draw of (scale, flip, crop offsets) from ``numpy.random.default_rng([seed, 5, p])`` (p: the item's global
stream position, so resume and several processes stay exact). ``cat_max_ratio`` < 1 (mmseg's ``RandomCrop``):
a candidate whose labelled pixels hold one class, or one class at a share >= the ratio, is re-drawn, at most
``max_redraws`` times. ``min_crop_ratio`` > 0 (DAFormer's ``get_rare_class_sample``): the crop that rule gives is
drawn again, rule included, until it holds more than ``min_pixels * min_crop_ratio`` pixels of the sampled class,
at most ``max_redraws`` times. Either way the last candidate is kept when none qualifies. Images come out as float
0..255 at the crop size, labels with 255 where the crop leaves the image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from dasuite.constants import IGNORE_INDEX
from dasuite.data import build_dataset
from dasuite.data.augment import AugmentConfig, crop_matrix, pseudo_valid, warp_images, warp_labels
from dasuite.data.base import DatasetConfig, SegDataset
from dasuite.data.class_stats import ClassStats, class_stats
from dasuite.data.loaders import InfiniteLoader, InfiniteSampler
from dasuite.data.sampling import (
    CROP_STREAM,
    MixSampler,
    RareClassConfig,
    RareClassStream,
    ShuffledStream,
    format_subset_list,
    rcs_class_probs,
    select_subset,
)
from dasuite.errors import DasuiteError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropRule:
    """An entry's crop re-draw rules (module docstring): ``class_pixels`` = ``min_pixels * min_crop_ratio`` (0 =
    off), ``cat_max_ratio`` (1 = off), ``max_redraws``."""

    class_pixels: float
    cat_max_ratio: float
    max_redraws: int

    @classmethod
    def from_config(cls, rcs: Optional[RareClassConfig]) -> Optional["CropRule"]:
        if rcs is None or not rcs.redraws_crops:
            return None
        return cls(rcs.min_pixels * rcs.min_crop_ratio, rcs.cat_max_ratio, rcs.max_redraws)

    def balanced(self, label: torch.Tensor, num_classes: int) -> bool:
        """mmseg's ``cat_max_ratio`` test: more than one class among the labelled pixels, none at a share >= it."""
        counts = torch.bincount(label[label != IGNORE_INDEX].flatten(), minlength=num_classes)
        return bool((counts > 0).sum() > 1 and counts.max() < self.cat_max_ratio * counts.sum())

    def holds(self, label: torch.Tensor, cls: int) -> bool:
        """DAFormer's re-draw test: more than ``class_pixels`` pixels of class ``cls``."""
        return bool((label == cls).sum() > self.class_pixels)


def redrawn_crop(label: torch.Tensor, cls: int, rule: Optional[CropRule], augment: AugmentConfig,
                 rng: np.random.Generator, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x2x3 ``crop_matrix`` and the HxW crop of ``label`` (int HxW) chosen by ``rule`` (module docstring) for
    sampled class ``cls`` (-1: none); candidates drawn from ``rng`` as ``DeviceAugment`` draws them."""
    size = tuple(label.shape[-2:])
    crop = tuple(augment.crop or (size[1], size[0]))

    def candidate() -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor([rng.uniform(*augment.scale)], dtype=torch.float32)
        flip = torch.tensor([rng.random() < augment.hflip])
        u = torch.tensor(rng.random((1, 2)), dtype=torch.float32)
        matrix = crop_matrix(s, flip, u, size, crop)
        return matrix, warp_labels(label[None], matrix, crop)[0]

    if rule is None:
        return candidate()
    cat_tries = rule.max_redraws + 1 if rule.cat_max_ratio < 1 else 1
    class_tries = rule.max_redraws + 1 if rule.class_pixels > 0 and cls >= 0 else 1
    return _first_accepted(lambda: _first_accepted(candidate, lambda c: rule.balanced(c, num_classes), cat_tries),
                           lambda c: rule.holds(c, cls), class_tries)


def _first_accepted(draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], accept: Callable[[torch.Tensor], bool],
                    tries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw()`` until its crop is ``accept``ed, at most ``tries`` draws; the last one when none is."""
    matrix, cropped = draw()
    for _ in range(tries - 1):
        if accept(cropped):
            break
        matrix, cropped = draw()
    return matrix, cropped


@dataclass
class Member:
    """One dataset of a role: ``path`` is its key under ``data`` (``source`` or ``source.mix.1``); ``indices`` the
    subset (sorted dataset indices) or None; ``rcs`` (probabilities (K,), per-class candidate positions) or None."""

    path: str
    entry: DatasetConfig
    dataset: SegDataset
    indices: Optional[np.ndarray] = None
    rcs: Optional[tuple[np.ndarray, list[np.ndarray]]] = None
    files: Optional[dict[str, str]] = None
    crop_rule: Optional[CropRule] = None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i]) if self.indices is not None else i]


class TrainingData(Dataset):
    """Concatenated members of one training role (module docstring); ``weights`` None = epoch-shuffled
    concatenation, else per-member sampling weights (summing to 1). ``augment`` is what the engine applies on the
    device; with a crop rule, ``crop_augment`` holds the role's own config, whose geometry runs here."""

    def __init__(self, role: str, members: list[Member], weights: Optional[np.ndarray], augment: AugmentConfig) -> None:
        self.role, self.members, self.weights = role, members, weights
        self.ends = np.cumsum([len(m) for m in members])
        self.classes = members[0].dataset.classes
        ruled = [m.path for m in members if m.crop_rule is not None]
        if ruled and not augment.enabled:
            raise DasuiteError(f"data.{ruled[0]}.rcs re-draws crops (min_crop_ratio / cat_max_ratio), but "
                               f"data.{role}.augment.enabled is false: there is no random crop to re-draw")
        self.crop_augment = augment if ruled else None
        on_device = {"scale": (1.0, 1.0), "crop": None, "hflip": 0.0, "pseudo_margins": None}
        self.augment = augment.model_copy(update=on_device) if ruled else augment

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: Union[int, tuple[int, int, int, int]]) -> dict:
        """An item by index, decoded; with a crop rule the sampler gives ``(index, class, seed, position)`` and
        the item comes back cropped (module docstring)."""
        draw = None
        if isinstance(index, tuple):
            index, *draw = index
        m = int(np.searchsorted(self.ends, index, side="right"))
        item = self.members[m][index - (int(self.ends[m - 1]) if m else 0)]
        if self.crop_augment is None or draw is None:
            return item
        cls, seed, position = draw
        rng = np.random.default_rng([seed, CROP_STREAM, position])
        label = torch.as_tensor(item["label"])
        matrix, cropped = redrawn_crop(label, cls, self.members[m].crop_rule, self.crop_augment, rng,
                                       self.num_classes)
        crop = tuple(cropped.shape[::-1])
        image = warp_images(torch.as_tensor(item["image"])[None].float(), matrix, crop)[0]
        item = {**item, "image": image, "label": cropped}
        margins = self.crop_augment.pseudo_margins
        if margins is not None:  # the device sees the crop only: its margin map is drawn here with it
            item["pseudo_valid"] = pseudo_valid(matrix, tuple(label.shape[-2:]), crop, margins)[0]
        return item

    def sampler(self, seed: int, rank: int = 0, world_size: int = 1) -> Union[InfiniteSampler, MixSampler]:
        """The infinite training index stream of process ``rank`` of ``world_size``."""
        if self.weights is None and not any(m.rcs for m in self.members):
            return InfiniteSampler(len(self), seed, rank, world_size)
        streams = [RareClassStream(*m.rcs, len(m), seed, i) if m.rcs else ShuffledStream(len(m), seed, i)
                   for i, m in enumerate(self.members)]
        weights = self.weights if self.weights is not None else [len(m) for m in self.members]
        return MixSampler(streams, weights, seed, rank, world_size, describe=self.crop_augment is not None)

    def loader(self, batch_size: int, num_workers: int, seed: int, rank: int = 0,
               world_size: int = 1) -> InfiniteLoader:
        """The infinite, resumable batch stream of process ``rank`` (``loaders.InfiniteLoader`` over ``sampler``)."""
        return InfiniteLoader(self, batch_size, num_workers, seed, rank, world_size,
                              sampler=self.sampler(seed, rank, world_size))

    def run_files(self) -> dict[str, str]:
        """Files for the run directory: ``subsets/<path>.txt`` (chosen image names), ``rcs/<path>.json``."""
        return {name: text for m in self.members for name, text in (m.files or {}).items()}


def _member(path: str, entry: DatasetConfig, default_resize: Optional[tuple[int, int]], num_workers: int) -> Member:
    dataset = build_dataset(entry, default_resize)
    subset, rcs = getattr(entry, "subset", None), getattr(entry, "rcs", None)
    member = Member(path, entry, dataset, files={})
    if subset is None and rcs is None:
        return member
    names = getattr(dataset, "names", None)  # file datasets list their item names: no pass needed for them
    needs_pixels = rcs is not None or (subset.file is None and subset.strategy == "class_balanced")
    if needs_pixels or not (isinstance(names, list) and len(names) == len(dataset)):
        stats = class_stats(dataset, dataset.num_classes, entry.model_dump(mode="json"), dataset.resize,
                            num_workers, label=f"data.{path}")
    else:
        stats = ClassStats(list(names), None)
    pixels = stats.pixels
    if subset is not None:
        member.indices = select_subset(subset, stats.names, pixels, f"data.{path}")
        member.files[f"subsets/{path}.txt"] = _subset_file(path, entry, stats, member.indices)
        pixels = pixels[member.indices] if pixels is not None else None
    if rcs is not None:
        if pixels is None:
            raise DasuiteError(f"data.{path}.rcs needs labels, but {entry.name} (split {entry.split}) has none")
        probs, candidates = rcs_class_probs(pixels, rcs.temperature, rcs.min_pixels)
        member.rcs = (probs, candidates)
        member.crop_rule = CropRule.from_config(rcs)
        member.files[f"rcs/{path}.json"] = _rcs_report(path, dataset, pixels, probs, candidates, rcs)
    return member


def _subset_file(path: str, entry: DatasetConfig, stats: ClassStats, indices: np.ndarray) -> str:
    s = entry.subset
    how = f"from file {s.file}" if s.file else f"strategy {s.strategy}, seed {s.seed}"
    lines = [f"subset of data.{path} ({entry.name}, split {entry.split}): {len(indices)} of {len(stats.names)} "
             f"images, {how}"]
    if stats.pixels is not None:
        present = (stats.pixels[indices] > 0).any(0).sum()
        lines.append(f"classes covered: {present} of the {(stats.pixels > 0).any(0).sum()} classes in the dataset")
    lines.append(f"reuse: data.{path}.subset={{file: <this file>}}")
    return format_subset_list([stats.names[i] for i in indices], "\n".join(lines))


def _rcs_report(path: str, dataset: SegDataset, pixels: np.ndarray, probs: np.ndarray, candidates: list, rcs) -> str:
    freq = pixels.sum(0) / max(int(pixels.sum()), 1)
    names = dataset.classes.names
    order = np.argsort(-probs, kind="stable")
    logger.info("data.%s: rare-class sampling P(c): %s", path,
                ", ".join(f"{names[c]} {probs[c]:.3f}" for c in order if probs[c] > 0))
    rows = [{"class": names[c], "id": int(c), "frequency": float(freq[c]), "probability": float(probs[c]),
             "candidates": len(candidates[c])} for c in order]
    return json.dumps({"temperature": rcs.temperature, "min_pixels": rcs.min_pixels,
                       "min_crop_ratio": rcs.min_crop_ratio, "cat_max_ratio": rcs.cat_max_ratio,
                       "max_redraws": rcs.max_redraws, "classes": rows}, indent=1)


def _check_mix(members: list[Member]) -> None:
    """Members of a mix share the class names (train-id order), the decoded image size and whether items carry
    labels."""
    first = members[0]
    probe0 = first[0]
    for m in members[1:]:
        if m.dataset.classes.names != first.dataset.classes.names:  # names in train-id order; palettes may differ
            ours, theirs = m.dataset.classes.names, first.dataset.classes.names
            first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise DasuiteError(
                f"data.{m.path} ({m.entry.name}) uses class table {m.dataset.classes.name!r} "
                f"({m.dataset.num_classes} classes) but data.{first.path} ({first.entry.name}) uses "
                f"{first.dataset.classes.name!r} ({first.dataset.num_classes} classes), first difference at train id "
                f"{first_diff}; the datasets of a mix must have the same class names in the same order")
        probe = m[0]
        (h0, w0), (h, w) = probe0["image"].shape[-2:], probe["image"].shape[-2:]
        if (h, w) != (h0, w0):
            raise DasuiteError(
                f"data.{m.path} ({m.entry.name}) decodes at {w}x{h} but data.{first.path} ({first.entry.name}) at "
                f"{w0}x{h0} (WxH); the entries of a mix are stacked into one batch: give them one resize "
                f"(data.resize, or the same resize on each entry)")
        if ("label" in probe) != ("label" in probe0):
            labelled, other = (m, first) if "label" in probe else (first, m)
            raise DasuiteError(f"data.{labelled.path} ({labelled.entry.name}) has labels but data.{other.path} "
                               f"({other.entry.name}) does not; the entries of a mix must all be labelled or all not")


def build_training_data(role: str, cfg: Any, default_resize: Optional[tuple[int, int]] = None,
                        num_workers: int = 0) -> TrainingData:
    """``cfg``: a dataset entry or a mix (``name: mix``, ``mix: [entries]``, ``weights``, ``augment``)."""
    entries = cfg.mix if cfg.name == "mix" else [cfg]
    paths = [f"{role}.mix.{i}" for i in range(len(entries))] if cfg.name == "mix" else [role]
    for path, entry in zip(paths, entries):
        if cfg.name == "mix" and entry.augment != AugmentConfig():
            raise DasuiteError(f"data.{path}.augment is set, but one batch holds items of every entry of a mix: set "
                               f"data.{role}.augment (next to mix: and weights:) instead")
    members = [_member(p, e, default_resize, num_workers) for p, e in zip(paths, entries)]
    if len(members) > 1:
        _check_mix(members)
    spec = cfg.weights if cfg.name == "mix" else "size"
    if spec == "size":
        weights = None
    elif spec == "equal":
        weights = np.full(len(members), 1.0 / len(members))
    else:
        weights = np.asarray(spec, np.float64) / float(np.sum(spec))
    return TrainingData(role, members, weights, cfg.augment)


def write_run_files(root: Path, files: dict[str, str], resume: bool) -> None:
    """Write the subset lists / RCS tables into the run directory. On resume a subset list that differs from the
    one the run started with (e.g. the dataset changed) is an error."""
    from dasuite.fileio import atomic_write_text

    for name, text in files.items():
        path = root / name
        if resume and name.startswith("subsets/") and path.is_file() and _names(path.read_text()) != _names(text):
            raise DasuiteError(f"{path}: the subset selected now differs from the one this run started with; "
                               f"resume with it by setting data.{name[8:-4]}.subset={{file: {path}}}")
        atomic_write_text(path, text)


def _names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
