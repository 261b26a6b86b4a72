"""A training role (``data.source`` / ``data.target``) as one dataset: a single entry or a ``mix`` of entries, each
optionally restricted to a ``subset`` and/or sampled by rare class (``rcs``); see ``sampling.py``.

``TrainingData`` concatenates its members (member m owns global indices ``offsets[m] ..``) and builds the sampler
that realises the mix: a plain entry, or a mix with ``weights: size`` and no RCS, is an ordinary epoch-shuffled
concatenation (``InfiniteSampler``: every image once per epoch, so a mix samples proportionally to sizes); explicit
or ``equal`` weights, or any RCS member, use ``MixSampler`` (per batch element: dataset by weight, then that
dataset's own shuffled or rare-class stream). Items of a mix are stacked into one batch, so all members must
decode at one size, carry labels alike and share one class table; the role's ``augment`` applies to the batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from dasuite.data import build_dataset
from dasuite.data.augment import AugmentConfig
from dasuite.data.base import DatasetConfig, SegDataset
from dasuite.data.class_stats import ClassStats, class_stats
from dasuite.data.loaders import InfiniteLoader, InfiniteSampler
from dasuite.data.sampling import (
    MixSampler,
    RareClassStream,
    ShuffledStream,
    format_subset_list,
    rcs_class_probs,
    select_subset,
)
from dasuite.errors import DasuiteError

logger = logging.getLogger(__name__)


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

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i]) if self.indices is not None else i]


class TrainingData(Dataset):
    """Concatenated members of one training role (module docstring); ``weights`` None = epoch-shuffled
    concatenation, else per-member sampling weights (summing to 1)."""

    def __init__(self, role: str, members: list[Member], weights: Optional[np.ndarray], augment: AugmentConfig) -> None:
        self.role, self.members, self.weights, self.augment = role, members, weights, augment
        self.ends = np.cumsum([len(m) for m in members])
        self.classes = members[0].dataset.classes

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> dict:
        m = int(np.searchsorted(self.ends, index, side="right"))
        return self.members[m][index - (int(self.ends[m - 1]) if m else 0)]

    def sampler(self, seed: int, rank: int = 0, world_size: int = 1) -> Union[InfiniteSampler, MixSampler]:
        """The infinite training index stream of process ``rank`` of ``world_size``."""
        if self.weights is None and not any(m.rcs for m in self.members):
            return InfiniteSampler(len(self), seed, rank, world_size)
        streams = [RareClassStream(*m.rcs, len(m), seed, i) if m.rcs else ShuffledStream(len(m), seed, i)
                   for i, m in enumerate(self.members)]
        weights = self.weights if self.weights is not None else [len(m) for m in self.members]
        return MixSampler(streams, weights, seed, rank, world_size)

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
    return json.dumps({"temperature": rcs.temperature, "min_pixels": rcs.min_pixels, "classes": rows}, indent=1)


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
