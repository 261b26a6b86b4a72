"""Data loaders: an infinite, resumable, rank-sharded training stream and an exact sharded evaluation loader.

Training: ``InfiniteSampler`` yields, per epoch ``e``, the permutation ``randperm(n, seed + e)`` (identical on every
rank), of which rank ``r`` takes ``perm[r::world_size]`` truncated to ``n // world_size`` so ranks stay in lockstep.
Its *position* (indices consumed on this rank) is advanced by ``InfiniteLoader`` only for batches the training loop
actually received, never for what workers prefetched, so ``state_dict()`` resumes exactly where the loop stopped.

Evaluation: ``build_eval_loader`` shards ``indices[rank::world_size]`` in order, with no padding or duplicates:
every sample is evaluated exactly once across processes. Do not pass it to ``accelerator.prepare`` (that would
re-shard it); sum the per-process confusion matrices instead.
"""

from __future__ import annotations

import functools

import random
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from dasuite.errors import DasuiteError
from dasuite.procs import worker_init


def collate_items(items: list[dict], labels_match_images: bool = True) -> dict:
    """Stack ``image`` (Bx3xHxW), ``label`` (BxHxW) and any other per-item tensor, and list ``name``; sizes must
    agree within a batch.

    Training batches need each label at its image's size (``labels_match_images``); evaluation batches keep labels
    at their stored resolution while images may be resized, so there only labels must agree with each other."""
    first = items[0]
    for item in items:
        if item["image"].shape != first["image"].shape:
            (h1, w1), (h2, w2) = first["image"].shape[-2:], item["image"].shape[-2:]
            raise DasuiteError(
                f"images in one batch differ in size: {first['name']!r} is {w1}x{h1} and {item['name']!r} is "
                f"{w2}x{h2} (WxH); set data.resize (or the dataset entry's resize) to decode all images at one size"
            )
        if "label" not in item:
            continue
        expected = item["image"].shape[-2:] if labels_match_images else first["label"].shape
        if item["label"].shape != expected:
            what = "image size" if labels_match_images else f"the label size of {first['name']!r}"
            raise DasuiteError(
                f"{item['name']!r}: label size {tuple(item['label'].shape)} differs from {what} "
                f"{tuple(expected)} (HxW); run `dasuite data check` on this dataset, or use eval.batch_size=1 "
                f"for datasets whose labels differ in size"
            )
    labelled = sum("label" in item for item in items)
    if 0 < labelled < len(items):
        raise DasuiteError(f"batch mixes labelled and unlabelled items (e.g. {first['name']!r})")
    batch: dict[str, Any] = {"image": torch.stack([i["image"] for i in items]), "name": [i["name"] for i in items]}
    if labelled:
        batch["label"] = torch.stack([i["label"] for i in items])
    for key in first.keys() - {"image", "label", "name"}:  # per-item maps drawn in the loader, e.g. pseudo_valid
        batch[key] = torch.stack([i[key] for i in items])
    return batch


def seed_worker(worker_id: int) -> None:
    """Start of every DataLoader worker: die with the parent and leave Ctrl-C to it (``dasuite.procs``), and seed
    numpy and ``random`` from torch's per-worker seed (decoding is deterministic anyway; this only keeps any future
    random CPU transform reproducible)."""
    worker_init()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader_kwargs(num_workers: int, seed: int) -> dict:
    # A private generator for the workers' base seed, so creating an iterator never consumes torch's global RNG.
    return dict(
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


class InfiniteSampler(Sampler[int]):
    """Infinite per-rank index stream (see the module docstring); iteration starts at ``position``."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if size < world_size:
            raise DasuiteError(f"a training dataset of {size} items cannot feed {world_size} processes")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = size // world_size
        self.position = 0

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.position, self.per_rank)
        while True:
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield from perm[self.rank :: self.world_size][offset : self.per_rank].tolist()
            epoch, offset = epoch + 1, 0

    def advance(self, count: int) -> None:
        """Record that ``count`` more indices were consumed (the next ``iter()`` starts after them)."""
        self.position += count

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "size": self.size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position. Seed and dataset size must match; a different world size keeps the epoch and
        maps the in-epoch offset by the number of samples all ranks consumed."""
        if state["seed"] != self.seed or state["size"] != self.size:
            raise DasuiteError(
                f"cannot resume the training stream: it was saved with seed {state['seed']} over {state['size']} "
                f"items, but this run has seed {self.seed} over {self.size} items"
            )
        old_ws = state["world_size"]
        epoch, offset = divmod(state["position"], self.size // old_ws)
        self.position = epoch * self.per_rank + min(offset * old_ws // self.world_size, self.per_rank)


def _unwrap_worker_error(err: DasuiteError) -> DasuiteError:
    """A DasuiteError raised in a worker comes back with the worker's traceback in its message: keep the message."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return type(err)(text.rsplit(marker, 1)[1].strip())
    return err


class InfiniteLoader:
    """Endless batches ``{"image": uint8 Bx3xHxW, "label": int64 BxHxW, "name": [str]}`` (CPU tensors).

    ``sampler``: any infinite index stream with the ``InfiniteSampler`` protocol (``advance``, ``state_dict``,
    ``load_state_dict``, iteration from its position), e.g. ``sampling.MixSampler``; default ``InfiniteSampler``.
    ``state_dict()`` counts the batches returned by ``__next__``; ``load_state_dict()`` makes the next batch the
    one an uninterrupted loader would have returned next.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int = 0, rank: int = 0,
        world_size: int = 1, sampler: Optional[Sampler[int]] = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = sampler if sampler is not None else InfiniteSampler(len(dataset), seed, rank, world_size)
        self.batches = 0
        self._loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, drop_last=True, **_loader_kwargs(num_workers, seed)
        )
        self._iter: Optional[Iterator[dict]] = None

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = iter(self._loader)
        try:
            batch = next(self._iter)
        except DasuiteError as e:
            raise _unwrap_worker_error(e) from None
        self.batches += 1
        self.sampler.advance(self.batch_size)
        return batch

    def state_dict(self) -> dict:
        return {"batches": self.batches, "batch_size": self.batch_size, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.batches = state["batches"]
        self._iter = None  # the next __next__ restarts the stream (and resets persistent workers) at the position


def build_train_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, rank: int = 0, world_size: int = 1,
    sampler: Optional[Sampler[int]] = None,
) -> InfiniteLoader:
    """The training stream of one dataset for process ``rank`` of ``world_size`` (``sampler``: see
    ``InfiniteLoader``; it must already be set up for that rank)."""
    return InfiniteLoader(dataset, batch_size, num_workers, seed, rank, world_size, sampler)


def build_eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """In-order loader over ``range(rank, len(dataset), world_size)``: no padding, no duplicates."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)))
    kwargs = {**_loader_kwargs(num_workers, 0), "collate_fn": functools.partial(collate_items, labels_match_images=False)}
    return DataLoader(shard, batch_size=batch_size, shuffle=False, drop_last=False, **kwargs)
