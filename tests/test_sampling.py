"""Mixes, target subsets, rare-class sampling: weights, exact resume, subset sizes and coverage, RCS formula,
class statistics cache, config shorthands, and the run directory files of a real engine run."""

import json
import pickle

import numpy as np
import pytest
import torch

from dasuite.config import load_config
from dasuite.data import class_stats as class_stats_module
from dasuite.data.class_stats import class_stats, compute_class_stats
from dasuite.data.loaders import InfiniteLoader
from dasuite.data.sampling import (
    CHUNK,
    MixSampler,
    RareClassStream,
    ShuffledStream,
    SubsetConfig,
    class_balanced_subset,
    format_subset_list,
    random_subset,
    rcs_class_probs,
    read_subset_file,
    select_subset,
)
from dasuite.data.training import build_training_data
from dasuite.engine.loop import train
from dasuite.errors import DasuiteError
from dasuite.fileio import load_torch
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config
from tests.test_loaders import IndexDataset, take

TOY = ROOT / "experiments" / "toy" / "source_only.yaml"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DASUITE_CACHE", str(tmp_path / "cache"))


def mix_sampler(sizes=(10, 7), weights=(0.5, 0.5), seed=1, rank=0, world_size=1, rcs=None):
    streams = [ShuffledStream(n, seed, m) for m, n in enumerate(sizes)]
    if rcs is not None:
        streams[rcs[0]] = RareClassStream(*rcs[1], sizes[rcs[0]], seed, rcs[0])
    return MixSampler(streams, weights, seed, rank, world_size)


def first(sampler, k: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(k)]


# ---------------------------------------------------------------------------------------------------- mixes
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8), (3.0, 1.0)])
def test_mix_weights_respected(weights):
    n = 3 * CHUNK
    drawn = np.array(first(mix_sampler(sizes=(10, 30), weights=weights), n))
    share = (drawn < 10).mean()
    expected = weights[0] / sum(weights)
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    # Within one dataset every item appears once per epoch of that dataset.
    from_first = drawn[drawn < 10][:50]
    assert all(sorted(from_first[i : i + 10].tolist()) == list(range(10)) for i in range(0, 50, 10))


def test_mix_deterministic_per_seed():
    a, b = first(mix_sampler(seed=3), 200), first(mix_sampler(seed=3), 200)
    assert a == b and a != first(mix_sampler(seed=4), 200)
    assert set(a) == set(range(17))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("with_rcs", [False, True])
def test_mix_and_rcs_resume_exactly(num_workers, with_rcs):
    rcs = (1, (np.array([0.3, 0.7]), [np.array([0, 2]), np.array([1, 3, 4, 5, 6])])) if with_rcs else None
    data = IndexDataset(17)
    reference = take(InfiniteLoader(data, 3, 0, sampler=mix_sampler(rcs=rcs)), 12)
    loader = InfiniteLoader(data, 3, num_workers, sampler=mix_sampler(rcs=rcs))
    assert take(loader, 5) == reference[:5]
    state = loader.state_dict()
    assert state["batches"] == 5 and state["sampler"]["position"] == 15
    resumed = InfiniteLoader(data, 3, num_workers, sampler=mix_sampler(rcs=rcs))
    resumed.load_state_dict(state)
    assert take(resumed, 7) == reference[5:]
    with pytest.raises(DasuiteError, match="cannot resume"):
        mix_sampler(weights=(0.2, 0.8), rcs=rcs).load_state_dict(state)


def test_resume_across_chunk_boundary():
    sampler = mix_sampler(sizes=(5, 9), weights=(0.3, 0.7))
    reference = first(sampler, CHUNK + 100)
    later = mix_sampler(sizes=(5, 9), weights=(0.3, 0.7))
    later.advance(CHUNK - 20)
    assert first(later, 120) == reference[CHUNK - 20 : CHUNK + 100]


def test_mix_ranks_interleave_the_global_stream():
    single = first(mix_sampler(), 40)
    ranks = [first(mix_sampler(rank=r, world_size=2), 20) for r in range(2)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    two = mix_sampler(rank=0, world_size=2)
    two.advance(6)  # both ranks consumed 6: 12 global positions
    one = mix_sampler()
    one.load_state_dict(two.state_dict())
    assert one.position == 12 and first(one, 5) == single[12:17]


# ------------------------------------------------------------------------------------------ rare classes
def test_rcs_probabilities_match_formula():
    pixels = np.array([  # 4 images x 4 classes
        [5000, 0, 100, 0],
        [8000, 4000, 0, 0],
        [2000, 0, 3500, 0],
        [9000, 0, 0, 2000],
    ])
    probs, candidates = rcs_class_probs(pixels, temperature=0.1, min_pixels=3000)
    totals = pixels.sum(0)
    f = totals / totals.sum()
    logits = (1 - f[:3]) / 0.1  # class 3 has no image above 3000 pixels: not eligible
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(probs[:3], expected, rtol=1e-12)
    assert probs[3] == 0 and probs.sum() == pytest.approx(1.0)
    assert [c.tolist() for c in candidates] == [[0, 1, 3], [1], [2], []]
    # T -> 0 concentrates on the rarest eligible class; a huge T is uniform over eligible classes.
    assert rcs_class_probs(pixels, 1e-4, 3000)[0].argmax() == 2
    np.testing.assert_allclose(rcs_class_probs(pixels, 1e6, 3000)[0][:3], 1 / 3, rtol=1e-5)
    with pytest.raises(DasuiteError, match="min_pixels"):
        rcs_class_probs(pixels, 0.1, 10**6)


def test_rcs_stream_draws_classes_by_probability():
    # 6 images, each holding one class: image i has class i % 3.
    probs = np.array([0.6, 0.3, 0.1])
    candidates = [np.array([0, 3]), np.array([1, 4]), np.array([2, 5])]
    stream = RareClassStream(probs, candidates, 6, seed=0, member=0)
    draws = stream.take(np.arange(2 * CHUNK))
    share = np.bincount(draws % 3, minlength=3) / len(draws)
    np.testing.assert_allclose(share, probs, atol=0.02)
    assert np.array_equal(stream.take(np.arange(CHUNK - 5, CHUNK + 5)), draws[CHUNK - 5 : CHUNK + 5])


# ------------------------------------------------------------------------------------------------ subsets
def rare_table(n=200, seed=0):
    """n images x 8 classes: classes 0-2 common, 3-7 in 1..5 images each."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((n, 8), np.int64)
    pixels[:, :3] = rng.integers(0, 5000, size=(n, 3))
    for c in range(3, 8):
        pixels[rng.choice(n, c - 2, replace=False), c] = 50
    return pixels


def test_subset_sizes_and_determinism():
    assert SubsetConfig(n=500).size(2975) == 500
    assert SubsetConfig(fraction=0.125).size(367) == 46  # the 1/8 CamVid split
    assert SubsetConfig(fraction=0.001).size(100) == 1
    a = random_subset(2975, 100, seed=0)
    assert len(a) == len(set(a.tolist())) == 100 and list(a) == sorted(a)
    assert np.array_equal(a, random_subset(2975, 100, seed=0)) and not np.array_equal(a, random_subset(2975, 100, 1))
    names = [f"img{i}.png" for i in range(20)]
    with pytest.raises(DasuiteError, match="asks for 30 images but the dataset has only 20"):
        select_subset(SubsetConfig(n=30), names, None, "data.target")
    with pytest.raises(DasuiteError, match="class_balanced needs labels"):
        select_subset(SubsetConfig(n=3, strategy="class_balanced"), names, None, "data.target")
    with pytest.raises(ValueError, match="exactly one of n, fraction or file"):
        SubsetConfig(n=3, fraction=0.5)


@pytest.mark.parametrize("n", [8, 10, 40])
def test_class_balanced_covers_every_class(n):
    pixels = rare_table()
    chosen = class_balanced_subset(pixels, n, seed=0)
    assert len(chosen) == n == len(set(chosen.tolist()))
    assert (pixels[chosen] > 0).any(0).all(), "every class present in the data is in the subset"
    misses = sum(not (pixels[random_subset(200, 8, s)] > 0).any(0).all() for s in range(20))
    assert misses >= 18, "the table is hard for random subsets (sanity check of the test)"
    assert np.array_equal(chosen, class_balanced_subset(pixels, n, seed=0))


def test_class_balanced_quota_and_absent_classes():
    pixels = rare_table()
    pixels[:, 1] = 0  # a class absent from the data is skipped, not an error
    chosen = class_balanced_subset(pixels, 30, seed=1, quota=3)
    present = pixels[chosen] > 0
    images_with = (pixels > 0).sum(0)
    for c in (0, 2, 3, 4, 5, 6, 7):
        assert present[:, c].sum() >= min(3, images_with[c])


def test_subset_file_round_trip(tmp_path):
    names = [f"frame_{i:03d}.png" for i in range(50)]
    chosen = random_subset(50, 12, seed=5)
    path = tmp_path / "subset.txt"
    path.write_text(format_subset_list([names[i] for i in chosen], "made by a test\nseed 5"))
    assert path.read_text().startswith("# made by a test\n# seed 5\nframe_")
    assert np.array_equal(read_subset_file(path, names, "data.target"), chosen)
    assert np.array_equal(select_subset(SubsetConfig(file=str(path)), names, None, "data.target"), chosen)
    path.write_text("frame_001.png\nnot_there.png\n")
    with pytest.raises(DasuiteError, match="not_there.png"):
        read_subset_file(path, names, "data.target")
    path.write_text("frame_001.png\nframe_001.png\n")
    with pytest.raises(DasuiteError, match="more than once"):
        read_subset_file(path, names, "data.target")


def test_subset_file_reads_unimatch_split_lines(tmp_path):
    """UniMatch's split lists hold an image path and a label path per line; the image's file name selects it."""
    names = ["aachen_000000_000019_leftImg8bit.png", "bochum_000000_000313_leftImg8bit.png", "x_leftImg8bit.png"]
    path = tmp_path / "labeled.txt"
    path.write_text("leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png "
                    "gtFine/train/bochum/bochum_000000_000313_gtFine.png\n"
                    "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png gtFine/train/aachen/a.png\n")
    assert read_subset_file(path, names, "data.source").tolist() == [0, 1]
    path.write_text("leftImg8bit/train/ulm/ulm_000001_leftImg8bit.png gtFine/train/ulm/ulm_000001_gtFine.png\n")
    with pytest.raises(DasuiteError, match="ulm_000001_leftImg8bit.png"):
        read_subset_file(path, names, "data.source")


# ------------------------------------------------------------------------------------- statistics, config
def toy_config(*overrides):
    return load_config(TOY, ["data.num_workers=0", *overrides])


def test_class_stats_counts_and_cache(tmp_path, monkeypatch):
    cfg = toy_config("data.source={name: toy, num_images: 5, size: [40, 30]}")
    data = build_training_data("source", cfg.data.source)
    ds = data.members[0].dataset
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    stats = compute_class_stats(ds, 19)
    assert torch.equal(torch.rand(3), expected), "the statistics pass must not consume the global RNG"
    labels = [ds[i]["label"] for i in range(5)]
    assert stats.names == [ds[i]["name"] for i in range(5)]
    assert stats.pixels.shape == (5, 19) and stats.pixels.sum() == sum(int((l < 19).sum()) for l in labels)
    assert stats.pixels[2, 10] == int((labels[2] == 10).sum())
    options = cfg.data.source.model_dump(mode="json")
    cached = class_stats(ds, 19, options, None)
    assert list((tmp_path / "cache" / "class_stats").glob("toy-*.npz"))
    monkeypatch.setattr(class_stats_module, "compute_class_stats", lambda *a, **k: pytest.fail("cache not used"))
    again = class_stats(ds, 19, {**options, "augment": {"crop": [8, 8]}}, None)  # training-only keys: same key
    assert again.names == cached.names and np.array_equal(again.pixels, cached.pixels)
    other = dict(options, seed=7)
    with pytest.raises(pytest.fail.Exception):
        class_stats(ds, 19, other, None)


def test_label_only_hook_and_listed_names_skip_decoding(monkeypatch):
    from dasuite.data.toy import ToyDataset

    ds = build_training_data("source", toy_config("data.source={name: toy, num_images: 4}").data.source).members[0]
    full = compute_class_stats(ds.dataset, 19)
    monkeypatch.setattr(ToyDataset, "label_at", lambda self, i: (self.raw_pair(i)[1], f"n{i}"), raising=False)
    monkeypatch.setattr(ToyDataset, "__getitem__", lambda self, i: pytest.fail("image decoded"))
    fast = compute_class_stats(ds.dataset, 19)
    assert fast.names == ["n0", "n1", "n2", "n3"] and np.array_equal(fast.pixels, full.pixels)
    # A dataset that lists its names needs no statistics pass for a random subset.
    monkeypatch.setattr(ToyDataset, "names", property(lambda self: [f"img{i}" for i in range(len(self))]),
                        raising=False)
    monkeypatch.setattr(class_stats_module, "compute_class_stats", lambda *a, **k: pytest.fail("stats computed"))
    data = build_training_data("source", toy_config("data.source={name: toy, num_images: 9, subset: {n: 3}}")
                               .data.source)
    listed = data.run_files()["subsets/source.txt"].splitlines()[-3:]
    assert listed == [f"img{i}" for i in data.members[0].indices]


def test_mix_shorthands_and_entries():
    cfg = toy_config("data.source=[{name: toy}, {name: toy, domain: real}]")
    assert cfg.data.source.name == "mix" and cfg.data.source.weights == "size"
    assert list(cfg.data.entries()) == ["source.mix.0", "source.mix.1", "val", "test"]
    cfg = toy_config("data.source={mix: [{name: toy}, {name: toy, domain: real}], weights: [1, 3]}")
    assert cfg.data.source.weights == [1.0, 3.0]
    with pytest.raises(Exception, match="2 positive numbers"):
        toy_config("data.source={mix: [{name: toy}, {name: toy}], weights: [1]}")
    with pytest.raises(Exception, match="unknown key"):
        toy_config("data.val.subset={n: 3}")
    entry = toy_config("data.source={name: toy, subset: {n: 3}}").data.source
    assert pickle.loads(pickle.dumps(entry)) == entry  # spawned DataLoader workers unpickle training entries


def test_mix_members_must_agree():
    mixed_sizes = toy_config("data.source=[{name: toy, size: [64, 48]}, {name: toy, domain: real, size: [48, 48]}]")
    with pytest.raises(DasuiteError, match=r"source\.mix\.1 \(toy\) decodes at 48x48 .* at 64x48.*resize"):
        build_training_data("source", mixed_sizes.data.source)
    fixed = build_training_data("source", mixed_sizes.data.source, default_resize=(32, 24))
    assert fixed[len(fixed) - 1]["image"].shape == (3, 24, 32)
    own_augment = toy_config("data.source=[{name: toy}, {name: toy, augment: {crop: [8, 8]}}]")
    with pytest.raises(DasuiteError, match=r"data\.source\.mix\.1\.augment is set.*data\.source\.augment"):
        build_training_data("source", own_augment.data.source)


def test_mix_of_different_class_tables_is_an_error(shared_data):
    cfg = toy_config(f"data.source=[{{name: toy}}, {{name: camvid, root: {shared_data / 'camvid'}, split: val}}]")
    with pytest.raises(DasuiteError, match=r"class table 'camvid' \(11 classes\).*'cityscapes' \(19 classes\)"):
        build_training_data("source", cfg.data.source, default_resize=(32, 24))


def test_training_data_concatenates_subsets_and_samples_by_weight():
    cfg = toy_config("data.source={mix: [{name: toy, num_images: 30, subset: {n: 4}}, "
                     "{name: toy, domain: real, num_images: 6}], weights: equal}")
    data = build_training_data("source", cfg.data.source, default_resize=(32, 24))
    assert len(data) == 10 and [len(m) for m in data.members] == [4, 6]
    subset_names = {data[i]["name"] for i in range(4)}
    files = data.run_files()
    assert set(files) == {"subsets/source.mix.0.txt"}
    listed = [l for l in files["subsets/source.mix.0.txt"].splitlines() if not l.startswith("#")]
    assert set(listed) == subset_names and all(n.startswith("toy_synthetic_train_") for n in listed)
    drawn = first(data.sampler(seed=0), 2000)
    assert abs(np.mean(np.array(drawn) < 4) - 0.5) < 0.05
    plain = build_training_data("source", toy_config().data.source)
    assert type(plain.sampler(0)).__name__ == "InfiniteSampler" and plain.run_files() == {}


# ---------------------------------------------------------------------------------------------- engine run
def test_engine_run_writes_subset_and_rcs_files(tmp_path):
    source = ("data.source={mix: [{name: toy, num_images: 16, subset: {n: 6, strategy: class_balanced}}, "
              "{name: toy, domain: real, num_images: 8, rcs: {temperature: 0.05, min_pixels: 20}}], "
              "weights: [0.5, 0.5], augment: {crop: [48, 48]}}")
    cfg = tiny_toy_config(tmp_path, source, "data.resize=[64,48]", max_iters=2)
    train(cfg)
    run = RunDir.for_config(cfg)
    subset_file = run.root / "subsets" / "source.mix.0.txt"
    names = [l for l in subset_file.read_text().splitlines() if not l.startswith("#")]
    assert len(names) == 6 and len(set(names)) == 6
    assert "reuse: data.source.mix.0.subset={file: <this file>}" in subset_file.read_text()
    table = json.loads((run.root / "rcs" / "source.mix.1.json").read_text())
    probs = [row["probability"] for row in table["classes"]]
    assert sum(probs) == pytest.approx(1.0) and table["temperature"] == 0.05
    state = load_torch(run.last)["loaders"]["source"]
    assert state["batches"] == 2 and state["sampler"]["position"] == 4 and "signature" in state["sampler"]
    # The written list is reusable: the same images come back from subset.file.
    reuse = tiny_toy_config(tmp_path / "b", source.replace("{n: 6, strategy: class_balanced}",
                                                             f"{{file: {subset_file}}}"), "data.resize=[64,48]")
    again = build_training_data("source", reuse.data.source, (64, 48))
    assert sorted(again[i]["name"] for i in range(6)) == sorted(names)


def test_engine_resume_with_mix_and_rcs_matches_uninterrupted_run(tmp_path, monkeypatch):
    from dasuite.methods import source_only

    source = ("data.source={mix: [{name: toy, num_images: 12, rcs: {temperature: 0.1, min_pixels: 30}}, "
              "{name: toy, domain: real, num_images: 8, subset: {n: 5}}], weights: [0.6, 0.4], "
              "augment: {crop: [48, 48]}}")
    settings = [source, "data.resize=[64,48]", "train.checkpoint_interval=2", "train.eval_interval=4"]
    full = train(tiny_toy_config(tmp_path / "full", *settings, max_iters=4))
    cfg = tiny_toy_config(tmp_path / "cut", *settings, max_iters=4)
    original = source_only.SourceOnly.training_step
    seen = []

    def crash_at_3(self, batches, step):
        seen.append(batches["source"]["name"])
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, batches, step)

    monkeypatch.setattr(source_only.SourceOnly, "training_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(source_only.SourceOnly, "training_step", original)
    resumed = train(cfg, resume=True)
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"]
    assert resumed["final"]["mean_loss"] == full["final"]["mean_loss"]
    assert len({n for names in seen for n in names if "real" in n}) <= 5, "only the subset of entry 1 is drawn"


def test_mix_accepts_a_folder_with_the_same_class_names(tmp_path):
    """Pseudo-labelled or translated folders (class table 'folder') mix with the dataset whose classes they copy."""
    import numpy as np
    from PIL import Image

    from dasuite.data.labels import CITYSCAPES

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.full((48, 64), i, np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    names = "[" + ", ".join(CITYSCAPES.names) + "]"
    folder = f"{{name: folder, root: {tmp_path}, classes: {names}}}"
    mixed = build_training_data("source", toy_config(f"data.source=[{folder}, {{name: toy, size: [64, 48]}}]").data.source)
    assert len(mixed) == 2 + 200 and mixed[0]["label"].max() <= 1
    renamed = names.replace("road", "street")
    other = toy_config(f"data.source=[{{name: folder, root: {tmp_path}, classes: {renamed}}}, "
                       f"{{name: toy, size: [64, 48]}}]")
    with pytest.raises(DasuiteError, match=r"first difference at train id 0"):
        build_training_data("source", other.data.source)
