"""Loading ImageNet (or other) weights from local files only, with loud failures instead of silent partial loads.

``pretrained`` is one of (nothing is ever downloaded):
- a ``.pth``/``.pt``/``.bin`` file (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file;
- a keyword of the family, e.g. ``imagenet`` or ``dinov2``: the family's usual file names (or Hugging Face snapshot
  folder names) are looked up in the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` (default
  ``~/.cache/torch/hub/checkpoints/``);
- a directory: a dasuite run directory (``checkpoints/best.safetensors``, else the ``model`` entry of
  ``checkpoints/last.pt``; the ``checkpoints/`` folder itself also works) or a Hugging Face model directory
  (``save_pretrained`` output: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, sharded
  ``*.index.json`` included).

Rules applied after the family's key converter (a silently unloaded pretrain is a classic cause of low mIoU):
- a checkpoint key with no counterpart in the model -> DasuiteError (wrong variant or naming);
- a shape mismatch -> DasuiteError, except for the final classifier(s) (``num_classes`` differs: skipped);
- an encoder/backbone tensor missing from the checkpoint -> DasuiteError (BN ``num_batches_tracked`` excepted);
- decoder / head tensors may be missing (ImageNet checkpoints have none): they keep their initialisation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence, Union

import torch
from safetensors.torch import load_file
from torch import nn

from dasuite.errors import DasuiteError

CheckpointState = dict[str, torch.Tensor]


class Converted(NamedTuple):
    """A checkpoint in the model's naming: ``state``; ``dropped`` = checkpoint keys known to be unused (ImageNet
    classifier...); ``origin`` = model key -> the checkpoint's own key, for keys that were renamed."""

    state: CheckpointState
    dropped: list[str]
    origin: dict[str, str]


Converter = Callable[[Mapping[str, torch.Tensor], nn.Module], Converted]

log = logging.getLogger(__name__)
_WRAPPER_KEYS = ("state_dict", "model", "module")
# Weights looked for in a directory, in order: a dasuite run directory (or its checkpoints/ folder), then the file
# names transformers' save_pretrained writes.
RUN_DIR_WEIGHTS = ("checkpoints/best.safetensors", "checkpoints/last.pt", "best.safetensors", "last.pt")
HF_DIR_WEIGHTS = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
# filenames: the hub-cache file names of ``imagenet``, or keyword -> file names (e.g. {"imagenet": ..., "coco": ...})
CheckpointNames = Union[Sequence[str], Mapping[str, Sequence[str]]]


@dataclass
class LoadReport:
    """What a pretrained load did: model keys filled, model keys left at init, checkpoint keys not used."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors from {self.source}; {len(self.missing)} model tensors keep their "
            f"initialisation (decoder/head); {len(self.dropped)} checkpoint tensors unused (ImageNet classifier etc.)"
        )


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder where torchvision keeps downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_checkpoint(pretrained: str, filenames: CheckpointNames, how_to_get: str) -> Path:
    """A file, a directory (run / Hugging Face, see the module docstring) or a keyword -> the weights file to read.

    ``filenames``: the hub-cache names tried for ``imagenet``, or a mapping keyword -> names. DasuiteError when
    nothing is found, naming what was looked for and ``how_to_get`` it.
    """
    keywords = dict(filenames) if isinstance(filenames, Mapping) else {"imagenet": tuple(filenames)}
    if pretrained in keywords:
        folder = hub_checkpoint_dir()
        for name in keywords[pretrained]:
            if (folder / name).is_file():
                return folder / name
            if (folder / name).is_dir():  # a Hugging Face snapshot folder kept in the cache (dinov2)
                return weights_in_directory(folder / name)
        raise DasuiteError(
            f"model.pretrained={pretrained}: none of {', '.join(keywords[pretrained])} found in {folder} "
            f"(the torch hub cache, $TORCH_HOME/hub/checkpoints); {how_to_get}"
        )
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return weights_in_directory(path)
    if not path.is_file():
        words = f"one of the keywords {', '.join(keywords)}" if keywords else "no keyword for this model"
        raise DasuiteError(
            f"pretrained weights file {path} not found (model.pretrained takes a weights file, a run or Hugging Face "
            f"model directory, or {words}); {how_to_get}"
        )
    return path


def weights_in_directory(folder: Path) -> Path:
    """The weights file of a dasuite run directory or a Hugging Face model directory (``RUN_DIR_WEIGHTS`` first)."""
    for name in (*RUN_DIR_WEIGHTS, *HF_DIR_WEIGHTS):
        if (folder / name).is_file():
            log.info("pretrained directory %s: using %s", folder, name)
            return folder / name
    kind = "has config.json but no weights" if (folder / "config.json").is_file() else "holds no known weights file"
    raise DasuiteError(
        f"pretrained directory {folder} {kind}: expected a dasuite run directory ({' or '.join(RUN_DIR_WEIGHTS[:2])}) "
        f"or a Hugging Face model directory (config.json + {' or '.join(HF_DIR_WEIGHTS)})"
    )


def read_checkpoint(path: Path) -> CheckpointState:
    """Tensors of a weights file (unwrapping ``state_dict``/``model`` dicts and DDP ``module.`` prefixes); a sharded
    Hugging Face ``*.index.json`` reads every shard of its ``weight_map``."""
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise DasuiteError(f"cannot read the shard index {path}: {exc} (expected a 'weight_map' object)") from exc
        state: CheckpointState = {}
        for shard in shards:
            state.update(read_checkpoint(path.parent / shard))
        return state
    try:
        if path.suffix == ".safetensors":
            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects refused by weights_only, not a checkpoint at all
        raise DasuiteError(
            f"cannot read pretrained weights {path}: {exc} (a training checkpoint holding pickled Python objects? "
            f"save its weights alone, e.g. torch.save(checkpoint['state_dict'], 'weights.pth'))"
        ) from exc
    while isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    state = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not state:
        raise DasuiteError(f"pretrained weights {path} hold no state dict (got {type(obj).__name__})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def apply_state(
    model: nn.Module,
    converted: Converted,
    *,
    source: Path,
    encoder_prefix: str,
    classifier_prefix: str | tuple[str, ...],
) -> LoadReport:
    """Copy ``converted.state`` into ``model`` after the checks in the module docstring (``classifier_prefix``: the
    final classifier(s), whose tensors are skipped, not refused, on a shape mismatch)."""
    own = model.state_dict()
    named = {k: converted.origin.get(k, k) for k in converted.state}  # errors quote the checkpoint's own names
    unexpected = [named[k] for k in converted.state if k not in own]
    if unexpected:
        raise DasuiteError(
            f"pretrained weights {source} have {len(unexpected)} keys that this model lacks "
            f"({_listing(unexpected)}): wrong model variant, or a checkpoint naming dasuite does not know"
        )
    report = LoadReport(source, dropped=list(converted.dropped))
    usable: CheckpointState = {}
    mismatched: list[str] = []
    for key, value in converted.state.items():
        if value.shape == own[key].shape:
            usable[key] = value
        elif key.startswith(classifier_prefix):  # another num_classes: the classifier keeps its initialisation
            log.warning("pretrained %s: skipping %s (shape %s, model %s)", source, key, value.shape, own[key].shape)
            report.dropped.append(named[key])
        else:
            mismatched.append(f"{named[key]} {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise DasuiteError(
            f"pretrained weights {source}: {len(mismatched)} tensors have the wrong shape ({_listing(mismatched, 3)}): "
            f"wrong model variant, or tiny=true with full-size weights?"
        )
    report.missing = [k for k in own if k not in usable]
    missing_encoder = [
        k for k in report.missing if k.startswith(encoder_prefix) and not k.endswith("num_batches_tracked")
    ]
    if missing_encoder:
        raise DasuiteError(
            f"pretrained weights {source} leave {len(missing_encoder)} encoder tensors unloaded "
            f"({_listing(missing_encoder)}): wrong file or model variant"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    return report


def load_pretrained(
    model: nn.Module,
    pretrained: str,
    *,
    filenames: CheckpointNames,
    how_to_get: str,
    convert: Converter,
    encoder_prefix: str,
    classifier_prefix: str | tuple[str, ...],
) -> LoadReport:
    """Resolve, read, convert (``convert(state, model) -> Converted``) and apply a checkpoint."""
    path = resolve_checkpoint(pretrained, filenames, how_to_get)
    try:
        converted = convert(read_checkpoint(path), model)
    except DasuiteError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"pretrained weights {path}: {exc}") from exc
    report = apply_state(
        model, converted, source=path, encoder_prefix=encoder_prefix, classifier_prefix=classifier_prefix
    )
    log.info(report.summary())
    return report
