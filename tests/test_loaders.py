"""Loaders: deterministic infinite stream, exact resume (also with workers), rank sharding, exact eval sharding."""

import pytest
import torch

from dasuite.data.loaders import (
    InfiniteLoader,
    InfiniteSampler,
    build_eval_loader,
    build_train_loader,
    collate_items,
)
from dasuite.errors import DasuiteError


class IndexDataset(torch.utils.data.Dataset):
    """Item i: a 2x3 image filled with i, label filled with i % 7, name str(i)."""

    def __init__(self, n: int, odd_size_at: int = -1) -> None:
        self.n, self.odd_size_at = n, odd_size_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        w = 4 if i == self.odd_size_at else 3
        return {
            "image": torch.full((3, 2, w), i, dtype=torch.uint8),
            "label": torch.full((2, w), i % 7, dtype=torch.int64),
            "name": f"img{i}.png",
        }


def indices(batch: dict) -> list[int]:
    return batch["image"][:, 0, 0, 0].tolist()


def take(loader, k: int) -> list[list[int]]:
    return [indices(next(loader)) for _ in range(k)]


def test_batches_and_epochs():
    loader = build_train_loader(IndexDataset(12), batch_size=4, num_workers=0, seed=0)
    batch = next(loader)
    assert batch["image"].shape == (4, 3, 2, 3) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (4, 2, 3) and batch["label"].dtype == torch.int64
    assert batch["name"] == [f"img{i}.png" for i in indices(batch)]
    epoch = indices(batch) + sum(take(loader, 2), [])
    assert sorted(epoch) == list(range(12)), "one epoch is a permutation of the dataset"
    assert sorted(sum(take(loader, 3), [])) == list(range(12))


def test_same_seed_same_sequence_other_seed_differs():
    a = take(build_train_loader(IndexDataset(10), 3, 0, seed=5), 8)
    b = take(build_train_loader(IndexDataset(10), 3, 0, seed=5), 8)
    c = take(build_train_loader(IndexDataset(10), 3, 0, seed=6), 8)
    assert a == b and a != c


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(num_workers):
    reference = take(build_train_loader(IndexDataset(10), 3, 0, seed=1), 12)
    first = build_train_loader(IndexDataset(10), 3, num_workers, seed=1)
    assert take(first, 5) == reference[:5]  # workers have prefetched beyond batch 5 by now
    state = first.state_dict()
    assert state["batches"] == 5 and state["sampler"]["position"] == 15
    resumed = build_train_loader(IndexDataset(10), 3, num_workers, seed=1)
    resumed.load_state_dict(state)
    assert take(resumed, 7) == reference[5:]
    # Loading a state into a loader that is already running rewinds it too.
    first.load_state_dict(state)
    assert take(first, 2) == reference[5:7]


def test_ranks_disjoint_and_in_lockstep():
    n = 11  # per rank: 11 // 2 = 5 indices per epoch, one dropped
    streams = [InfiniteLoader(IndexDataset(n), 5, 0, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):  # three epochs
        r0, r1 = (indices(next(s)) for s in streams)
        assert not set(r0) & set(r1)
        assert len(set(r0) | set(r1)) == 10
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3 + 0)).tolist()
    again = [InfiniteLoader(IndexDataset(n), 5, 0, seed=3, rank=r, world_size=2) for r in range(2)]
    assert [indices(next(s)) for s in again] == [perm[0:10:2], perm[1:10:2]]


def test_sampler_state_and_world_size_change():
    sampler = InfiniteSampler(10, seed=2, rank=0, world_size=2)  # 5 per rank per epoch
    sampler.advance(7)  # epoch 1, offset 2 -> 4 samples of epoch 1 consumed by both ranks together
    single = InfiniteSampler(10, seed=2, rank=0, world_size=1)
    single.load_state_dict(sampler.state_dict())
    assert single.position == 10 + 4
    with pytest.raises(DasuiteError, match="seed 2"):
        InfiniteSampler(10, seed=9).load_state_dict(sampler.state_dict())
    with pytest.raises(DasuiteError, match="3 processes"):
        InfiniteSampler(2, world_size=3)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [7, 11])
def test_eval_sharding_covers_each_index_once(world_size, n):
    seen = []
    for rank in range(world_size):
        shard = [i for b in build_eval_loader(IndexDataset(n), 2, 0, rank, world_size) for i in indices(b)]
        assert shard == sorted(shard), "each shard is in order"
        seen += shard
    assert sorted(seen) == list(range(n))


def test_eval_loader_with_workers_keeps_order_and_names():
    loader = build_eval_loader(IndexDataset(9), 4, 2, rank=1, world_size=2)
    batches = list(loader)
    assert [b["name"] for b in batches] == [["img1.png", "img3.png", "img5.png", "img7.png"]]


def test_mixed_sizes_raise_naming_both_files():
    items = [IndexDataset(5, odd_size_at=3)[i] for i in (2, 3)]
    with pytest.raises(DasuiteError, match=r"'img2\.png' is 3x2 and 'img3\.png' is 4x2.*data\.resize"):
        collate_items(items)
    loader = build_eval_loader(IndexDataset(5, odd_size_at=3), 5, 0)
    with pytest.raises(DasuiteError, match="data.resize"):
        next(iter(loader))


def test_worker_error_message_is_unwrapped():
    loader = build_train_loader(IndexDataset(4, odd_size_at=0), 4, 1, seed=0)
    with pytest.raises(DasuiteError) as info:
        next(loader)
    message = str(info.value)
    assert message.startswith("images in one batch differ in size") and "Traceback" not in message


def test_unlabelled_items_and_mixed_labelling():
    item = {"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "name": "a.png"}
    batch = collate_items([item, dict(item, name="b.png")])
    assert "label" not in batch and batch["image"].shape == (2, 3, 2, 2)
    with pytest.raises(DasuiteError, match="labelled and unlabelled"):
        collate_items([item, dict(item, label=torch.zeros(2, 2, dtype=torch.int64))])


def test_loader_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(build_train_loader(IndexDataset(10), 3, 0, seed=4), 4)
    assert torch.equal(torch.rand(3), expected)
