"""What a training role samples: target subsets, rare-class sampling (RCS) and weighted mixes of datasets.

Subsets (``subset:`` on a training entry) pick a fixed list of images once, before training:

- ``random``: ``n`` images drawn without replacement with ``numpy.random.default_rng([seed, 3])``;
- ``class_balanced``: greedy coverage of rare classes from per-image class presence (``pixels > 0``): classes are
  visited from the one present in the fewest images to the most common; for each, images containing it are drawn
  at random until ``min(quota, images with the class)`` chosen images contain it; the rest of the budget is filled
  at random (all draws from ``default_rng([seed, 4])``). ``quota`` defaults to ``max(1, n // (2 * classes
  present))``, so at most about half the budget goes to coverage and, whenever ``n`` >= the number of classes
  present, every class is in at least one chosen image;
- ``file``: the image names listed in a file (one per line, ``#`` comments), e.g. the list an earlier run wrote.

Rare-class sampling (DAFormer, Hoyer et al. CVPR'22): class frequencies ``f_c`` = pixels of c / labelled pixels,
``P(c) = softmax((1 - f_c) / T)`` over the classes that have at least one image with more than ``min_pixels``
pixels of them; each draw picks a class c ~ P, then uniformly one of those images. Its crop re-draw rules
(``min_crop_ratio``, ``cat_max_ratio``) need the drawn class where the crop is drawn, so the sampler then yields
``(index, class, seed, position)`` and ``training.TrainingData`` crops in the loader.

Sampling streams are *position addressable*: the index at global stream position p is a pure function of (seed,
p), computed in chunks of ``CHUNK`` positions from ``numpy.random.default_rng([seed, stream, ...])``. So a stream
resumes exactly from a position (the loader's checkpoint) and all ranks agree on it; rank r of w takes the global
positions r, r + w, r + 2w, ...
"""

from __future__ import annotations

import functools
import os
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Protocol, Sequence

import numpy as np
from pydantic import Field, model_validator

from dasuite.errors import DasuiteError
from dasuite.schema_base import Section

CHUNK = 4096  # stream positions generated per RNG call
_MIX, _SHUFFLE, _RCS, _RANDOM_SUBSET, _BALANCED_SUBSET, CROP_STREAM = range(6)  # tags in the RNG seed sequences


class SubsetConfig(Section):
    """A fixed subset of a training entry: exactly one of ``n``, ``fraction`` (``n = max(1, round(fraction * N))``)
    or ``file``; ``strategy`` and ``seed`` choose the images (the seed is the subset's own, independent of the
    experiment seed, so runs with several seeds train on the same images)."""

    n: Optional[int] = Field(None, gt=0)
    """Number of images to keep."""
    fraction: Optional[float] = Field(None, gt=0, le=1)
    """Fraction of the images to keep (``n = max(1, round(fraction * N))``)."""
    file: Optional[str] = None
    """File of image names to keep, one per line (e.g. the list a run wrote); relative to the working directory."""
    strategy: Literal["random", "class_balanced"] = "random"
    """How ``n`` / ``fraction`` images are chosen: ``random`` or ``class_balanced`` (covers rare classes first)."""
    seed: int = 0
    """The subset's own seed (not the experiment's), so runs with several seeds train on the same images."""
    quota: Optional[int] = Field(None, gt=0)
    """``class_balanced``: images per class to guarantee; null = ``max(1, n // (2 * classes present))``."""

    @model_validator(mode="after")
    def _one_size(self) -> "SubsetConfig":
        given = [k for k in ("n", "fraction", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of n, fraction or file (got {', '.join(given) or 'none'})")
        return self

    def size(self, total: int) -> int:
        """Number of images selected from ``total`` (for ``n`` / ``fraction``)."""
        return self.n if self.n is not None else max(1, round(float(self.fraction) * total))


class RareClassConfig(Section):
    """DAFormer's rare-class sampling: each draw picks a class c with probability ``softmax((1 - f_c) / T)``
    (``f_c``: the class's pixel frequency), then uniformly one of the images holding more than ``min_pixels`` of it.
    With ``min_crop_ratio`` or ``cat_max_ratio`` set, the role's random crop is drawn in the loader, re-drawn by
    DAFormer's rules (``dasuite.data.training``)."""

    temperature: float = Field(0.01, gt=0)
    """Temperature T of ``P(c) = softmax((1 - f_c) / T)``; smaller favours rare classes more."""
    min_pixels: int = Field(3000, ge=0)
    """An image is drawn for class c only if it holds more than this many pixels of c (at decode resolution)."""
    min_crop_ratio: float = Field(0.0, ge=0)
    """Re-draw the crop (up to ``max_redraws`` times) until it holds more than ``min_pixels * min_crop_ratio``
    pixels of the sampled class (DAFormer 0.5, HRDA 2.0); 0 = off (one crop, drawn on the device)."""
    max_redraws: int = Field(10, ge=0)
    """Re-draws after the first crop for ``min_crop_ratio`` and ``cat_max_ratio`` (DAFormer: 10; the last crop is
    kept when none qualifies)."""
    cat_max_ratio: float = Field(1.0, gt=0, le=1)
    """DAFormer's source-crop rule (mmseg ``RandomCrop``): re-draw a crop whose labelled pixels hold one class only
    or one class at a share >= this (DAFormer 0.75), up to ``max_redraws`` times; 1 = off."""

    @property
    def redraws_crops(self) -> bool:
        """Whether a crop rule is on (the crop is then drawn in the loader)."""
        return self.min_crop_ratio > 0 or self.cat_max_ratio < 1


class TrainingOptions(Section):
    """Keys a training-role entry (``data.source`` / ``data.target`` or an entry of their ``mix``) adds to its
    dataset's own keys."""

    subset: Optional[SubsetConfig] = None
    """Train on a fixed subset of the entry's images (``n``, ``fraction`` or ``file``); null = all images."""
    rcs: Optional[RareClassConfig] = None
    """Rare-class sampling (DAFormer, Hoyer et al. CVPR'22); null = uniform sampling."""


def training_variants(entry_union: Any) -> tuple[type, ...]:
    """For every dataset config class of the discriminated union ``entry_union`` (``Annotated[Union[...], ...]``),
    its training variant: a subclass adding ``TrainingOptions``'s keys (same ``name`` tag, fields and validators,
    so ``build_dataset`` accepts it), so new datasets get ``subset`` / ``rcs`` without further code."""
    union = typing.get_args(entry_union)[0]
    return tuple(_training_variant(cls) for cls in (typing.get_args(union) or (union,)))


@functools.cache
def _training_variant(cls: type) -> type:
    namespace = {"__module__": cls.__module__, "__doc__": cls.__doc__, "__reduce__": _reduce_variant}
    return type(cls.__name__, (cls, TrainingOptions), namespace)


def _reduce_variant(entry: Section) -> tuple:
    """Pickle a training variant by its dataset config class and values (spawned DataLoader workers)."""
    return _rebuild_variant, (type(entry).__bases__[0], entry.model_dump())


def _rebuild_variant(cls: type, values: dict) -> Section:
    return _training_variant(cls).model_validate(values)


# ----------------------------------------------------------------------------------------------------- subsets
def random_subset(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` of ``range(total)`` without replacement, sorted."""
    return np.sort(np.random.default_rng([seed, _RANDOM_SUBSET]).choice(total, n, replace=False))


def class_balanced_subset(pixels: np.ndarray, n: int, seed: int, quota: Optional[int] = None) -> np.ndarray:
    """Greedy rare-class coverage (module docstring); ``pixels`` is (N, K) per-image class pixel counts. Sorted."""
    present = pixels > 0
    images_with = present.sum(0)
    classes = [c for c in np.argsort(images_with, kind="stable") if images_with[c] > 0]
    quota = quota or max(1, n // (2 * max(len(classes), 1)))
    rng = np.random.default_rng([seed, _BALANCED_SUBSET])
    chosen = np.zeros(len(pixels), bool)
    for c in classes:
        budget = n - int(chosen.sum())
        need = min(quota, int(images_with[c])) - int(present[chosen, c].sum())
        if budget <= 0:
            break
        if need > 0:
            pool = np.flatnonzero(present[:, c] & ~chosen)
            chosen[rng.choice(pool, min(need, budget, len(pool)), replace=False)] = True
    rest = np.flatnonzero(~chosen)
    chosen[rng.choice(rest, n - int(chosen.sum()), replace=False)] = True
    return np.flatnonzero(chosen)


def read_subset_file(path: Path, names: Sequence[str], where: str) -> np.ndarray:
    """Indices (sorted) of the image names listed in ``path`` (one per line, ``#`` comments) among ``names``. A line's
    first whitespace-separated field is the name; a path there (UniMatch's split lists: ``leftImg8bit/train/<city>/
    <name> gtFine/...``) counts by its file name when the whole path is not a name."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DasuiteError(f"{where}.subset.file: cannot read {str(path)!r}: {e.strerror or e}") from None
    position = {name: i for i, name in enumerate(names)}
    fields = [line.split("#", 1)[0].split() for line in lines]
    listed = [f[0] if f[0] in position else f[0].rsplit("/", 1)[-1] for f in fields if f]
    missing = [name for name in listed if name not in position]
    if missing:
        raise DasuiteError(f"{where}.subset.file {str(path)!r}: {len(missing)} listed image(s) are not in the dataset "
                           f"({len(names)} images), e.g. {missing[0]!r}")
    if not listed:
        raise DasuiteError(f"{where}.subset.file {str(path)!r} lists no images")
    if len(set(listed)) != len(listed):
        dup = next(name for name in listed if listed.count(name) > 1)
        raise DasuiteError(f"{where}.subset.file {str(path)!r} lists {dup!r} more than once")
    return np.sort(np.array([position[name] for name in listed], dtype=np.int64))


def select_subset(cfg: SubsetConfig, names: Sequence[str], pixels: Optional[np.ndarray], where: str) -> np.ndarray:
    """The sorted dataset indices a ``subset`` entry selects; ``pixels`` (N, K) is needed for ``class_balanced``."""
    total = len(names)
    if cfg.file is not None:
        return read_subset_file(Path(os.path.expandvars(cfg.file)).expanduser(), names, where)
    n = cfg.size(total)
    if n > total:
        raise DasuiteError(f"{where}.subset asks for {n} images but the dataset has only {total}")
    if cfg.strategy == "random":
        return random_subset(total, n, cfg.seed)
    if pixels is None:
        raise DasuiteError(f"{where}.subset.strategy=class_balanced needs labels, but the dataset has none")
    return class_balanced_subset(pixels, n, cfg.seed, cfg.quota)


def format_subset_list(names: Sequence[str], header: str) -> str:
    """A subset file: ``# header`` lines, then one image name per line (readable by ``read_subset_file``)."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + "".join(f"{name}\n" for name in names)


# --------------------------------------------------------------------------------------------- rare classes
def rcs_class_probs(pixels: np.ndarray, temperature: float, min_pixels: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """DAFormer's class distribution from (N, K) pixel counts: ``P`` (K,) with
    ``P[eligible] = softmax((1 - f[eligible]) / T)``, ``f_c = sum_i pixels[i, c] / sum_i,c pixels``, 0 elsewhere,
    and per class the images with more than ``min_pixels`` pixels of it (eligible = at least one such image)."""
    totals = pixels.sum(0).astype(np.float64)
    if totals.sum() == 0:
        raise DasuiteError("rare-class sampling needs labelled pixels, but the labels hold none")
    freq = totals / totals.sum()
    candidates = [np.flatnonzero(pixels[:, c] > min_pixels) for c in range(pixels.shape[1])]
    eligible = np.array([len(c) > 0 for c in candidates])
    if not eligible.any():
        raise DasuiteError(f"rare-class sampling: no image has more than rcs.min_pixels={min_pixels} pixels of any "
                           f"class; lower rcs.min_pixels (it counts pixels at the decode resolution)")
    logits = (1.0 - freq[eligible]) / temperature
    probs = np.zeros(len(freq))
    probs[eligible] = np.exp(logits - logits.max())
    return probs / probs.sum(), candidates


# -------------------------------------------------------------------------------------------------- streams
class IndexStream(Protocol):
    """Per-dataset draws: ``draw(draws)`` maps this dataset's draw numbers 0, 1, 2, ... to its item indices and the
    class each draw sampled (-1: none); ``take`` to the indices alone."""

    size: int

    def draw(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def take(self, draws: np.ndarray) -> np.ndarray: ...

    def signature(self) -> list: ...


class ShuffledStream:
    """Epoch permutations: draw j is ``perm_e[j % n]`` with ``perm_e = default_rng([seed, 1, member, e])
    .permutation(n)``, e = j // n (every item once per epoch of this dataset)."""

    def __init__(self, size: int, seed: int, member: int) -> None:
        self.size, self.seed, self.member = size, seed, member

    def draw(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.take(draws), np.full(len(draws), -1, np.int64)

    def take(self, draws: np.ndarray) -> np.ndarray:
        out = np.empty(len(draws), np.int64)
        epochs = draws // self.size
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            perm = np.random.default_rng([self.seed, _SHUFFLE, self.member, int(epoch)]).permutation(self.size)
            out[sel] = perm[draws[sel] % self.size]
        return out

    def signature(self) -> list:
        return ["shuffle", self.size]


class RareClassStream:
    """Independent draws: class c ~ ``probs``, then uniformly one of ``candidates[c]``; draws j of chunk
    k = j // CHUNK come from ``default_rng([seed, 2, member, k])``."""

    def __init__(self, probs: np.ndarray, candidates: list[np.ndarray], size: int, seed: int, member: int) -> None:
        self.probs, self.size, self.seed, self.member = probs, size, seed, member
        self.counts = np.array([len(c) for c in candidates])
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.flat = np.concatenate(candidates).astype(np.int64)

    def draw(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, drawn = np.empty(len(draws), np.int64), np.empty(len(draws), np.int64)
        chunks = draws // CHUNK
        for chunk in np.unique(chunks):
            sel = chunks == chunk
            rng = np.random.default_rng([self.seed, _RCS, self.member, int(chunk)])
            classes = rng.choice(len(self.probs), CHUNK, p=self.probs)
            u = rng.random(CHUNK)
            at = draws[sel] % CHUNK
            c = classes[at]
            out[sel] = self.flat[self.starts[c] + (u[at] * self.counts[c]).astype(np.int64)]
            drawn[sel] = c
        return out, drawn

    def take(self, draws: np.ndarray) -> np.ndarray:
        return self.draw(draws)[0]

    def signature(self) -> list:
        return ["rcs", self.size, [round(float(p), 12) for p in self.probs]]


class MixSampler:
    """Infinite per-rank stream over concatenated datasets: global position p picks dataset m with probability
    ``weights[m]`` (chunk k = p // CHUNK from ``default_rng([seed, 0, k])``), then dataset m's next draw from its
    ``IndexStream``; it yields ``offsets[m] + index``, or with ``describe`` the tuple ``(offsets[m] + index, class
    sampled or -1, seed, p)`` (what a loader-side crop needs: ``TrainingData``). Same state protocol as
    ``InfiniteSampler``."""

    def __init__(self, streams: Sequence[IndexStream], weights: Sequence[float], seed: int = 0, rank: int = 0,
                 world_size: int = 1, describe: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if len(streams) != len(weights) or not streams:
            raise ValueError(f"{len(streams)} streams but {len(weights)} weights")
        w = np.asarray(weights, np.float64)
        self.streams, self.weights = list(streams), w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum([s.size for s in streams])[:-1]]).astype(np.int64)
        self.seed, self.rank, self.world_size, self.describe = seed, rank, world_size, describe
        self.position = 0

    def _members(self, chunk: int) -> np.ndarray:
        if len(self.streams) == 1:
            return np.zeros(CHUNK, np.int64)
        return np.random.default_rng([self.seed, _MIX, chunk]).choice(len(self.streams), CHUNK, p=self.weights)

    def _chunk(self, chunk: int, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global indices and sampled classes of the chunk's positions, given the draws each dataset made before
        it; updated draws."""
        members = self._members(chunk)
        out, classes = np.empty(CHUNK, np.int64), np.empty(CHUNK, np.int64)
        for m, stream in enumerate(self.streams):
            sel = members == m
            draws = drawn[m] + np.arange(int(sel.sum()))
            index, classes[sel] = stream.draw(draws)
            out[sel] = self.offsets[m] + index
        return out, classes, drawn + np.bincount(members, minlength=len(self.streams))

    def __iter__(self) -> Iterator[Any]:
        ws, nxt = self.world_size, self.position * self.world_size + self.rank  # next global position of this rank
        chunk = nxt // CHUNK
        drawn = sum((np.bincount(self._members(k), minlength=len(self.streams)) for k in range(chunk)),
                    np.zeros(len(self.streams), np.int64))
        while True:
            out, classes, drawn = self._chunk(chunk, drawn)
            at = slice(nxt - chunk * CHUNK, None, ws)
            if self.describe:
                positions = np.arange(chunk * CHUNK, (chunk + 1) * CHUNK)[at]
                yield from ((i, c, self.seed, p) for i, c, p in
                            zip(out[at].tolist(), classes[at].tolist(), positions.tolist()))
            else:
                yield from out[at].tolist()
            chunk += 1
            nxt += ws * max(0, -(-(chunk * CHUNK - nxt) // ws))  # first position of this rank in the next chunk

    def advance(self, count: int) -> None:
        """Record that ``count`` more indices were consumed on this rank."""
        self.position += count

    def signature(self) -> list:
        return [[round(float(w), 12) for w in self.weights], [s.signature() for s in self.streams]]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "world_size": self.world_size,
                "signature": self.signature()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; seed, weights and datasets must match. With another world size the global
        position (samples all ranks consumed) is kept."""
        if state.get("seed") != self.seed or state.get("signature") != self.signature():
            raise DasuiteError(
                "cannot resume the training stream: it was saved with another seed, mix weights, dataset sizes or "
                f"rare-class table (saved seed {state.get('seed')}, this run {self.seed})"
            )
        self.position = state["position"] * state["world_size"] // self.world_size
