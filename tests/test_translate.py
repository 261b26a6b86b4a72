"""``dasuite translate``: the parent's layout and names, loading the output as a ``translated`` (or, for the toy,
``folder``) dataset, tiled vs whole-image inference, atomic and resumable writing after a simulated kill, the
manifest, and the errors."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from torch import nn

from dasuite import translate as tr
from dasuite.cli import main
from dasuite.cli.translate import format_result
from dasuite.config.load import dump_config, load_config
from dasuite.data import FolderConfig, GTA5Config, ToyConfig, TranslatedConfig, build_dataset
from dasuite.data.toy import render_toy
from dasuite.errors import DasuiteError
from dasuite.fileio import save_torch
from dasuite.models.tiling import AUTO_TILE, Tiling, run_tiled, tile_starts
from tests.conftest import ROOT, tiny_toy_config

SIZES = {"00001": (22, 14), "00002": (16, 12), "00003": (22, 14), "00004": (22, 14), "00005": (16, 12)}  # (w, h)
PROVENANCE = {"run": "/runs/cyclegan/seed0", "checkpoint": "/runs/cyclegan/seed0/checkpoints/last.pt",
              "checkpoint_sha256": "a" * 64, "direction": "source_to_target"}


def inverting(permute: bool = True) -> nn.Conv2d:
    """A pointwise stand-in generator: y = -x[perm] in [-1, 1], i.e. output pixel = 255 - input[perm] exactly."""
    conv = nn.Conv2d(3, 3, 1)
    perm = [2, 0, 1] if permute else [0, 1, 2]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for out_ch, in_ch in enumerate(perm):
            conv.weight[out_ch, in_ch] = -1.0
    return conv


def conv_generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 8, 3), nn.Tanh(), nn.ReflectionPad2d(1),
                         nn.Conv2d(8, 3, 3), nn.Tanh())


def expected(image: np.ndarray) -> np.ndarray:
    return 255 - image[..., [2, 0, 1]]


@pytest.fixture
def gta(tmp_path: Path) -> Path:
    """A GTA5-layout folder: images of two sizes (not multiples of 4), paletted labelId labels."""
    rng = np.random.default_rng(0)
    root = tmp_path / "gta5"
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for stem, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"images/{stem}.png")
        label = Image.fromarray(rng.choice(np.array([7, 8, 26], np.uint8), (h, w)), mode="P")
        label.putpalette([v for i in range(256) for v in (i, i, i)])
        label.save(root / f"labels/{stem}.png")
    return root


def quick(**kw) -> tr.Options:
    """In-process, no progress bar: tests monkeypatch the writer and count on one thread."""
    return tr.Options(**{"batch_size": 2, "num_workers": 0, "writers": 0, "progress": False, **kw})


def run_gta(gta: Path, out: Path, provenance: dict = PROVENANCE, **kw) -> dict:
    return tr.translate_dataset(inverting(), GTA5Config(root=str(gta)), out, provenance, quick(**kw))


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_layout_names_and_loading_as_translated_source(gta, tmp_path):
    out = tmp_path / "cycle_gta5"
    manifest = run_gta(gta, out)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{s}.png" for s in SIZES]
    for stem in SIZES:  # full resolution, RGB order kept, exact pointwise translation
        assert np.array_equal(read(out / f"{stem}.png"), expected(read(gta / f"images/{stem}.png")))
    entry = manifest["dataset_entry"]
    assert entry == {"name": "translated", "parent": {"name": "gta5", "root": str(gta), "split": "all"},
                     "images_root": str(out.resolve())}  # all PNG: no image_ext needed
    translated, parent = build_dataset(TranslatedConfig.model_validate(entry)), build_dataset(GTA5Config(root=str(gta)))
    assert translated.names == parent.names == [f"{s}.png" for s in SIZES]
    item, original = translated[1], parent[1]
    assert torch.equal(item["label"], original["label"]) and item["image"].shape == (3, 12, 16)
    assert torch.equal(item["image"], 255 - original["image"][[2, 0, 1]])
    assert not list(out.rglob("*.tmp"))
    printed = format_result(manifest)
    assert "5 of 5 images translated (5 written, 0 already done)" in printed
    assert yaml.safe_load(printed.split(":\n", 1)[1]) == entry


def test_folder_parent_keeps_subfolders_and_needs_image_ext_for_jpg(tmp_path):
    root = tmp_path / "shots"
    for rel, ext in (("a/x", ".jpg"), ("b/y", ".png")):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 12, 3), 40, np.uint8)).save(root / "images" / f"{rel}{ext}")
        Image.fromarray(np.ones((8, 12), np.uint8)).save(root / "labels" / f"{rel}.png")
    entry = FolderConfig(root=str(root), classes=["a", "b"])
    manifest = tr.translate_dataset(inverting(False), entry, tmp_path / "out", PROVENANCE, quick())
    assert sorted(manifest["files"]) == ["a/x.png", "b/y.png"]
    assert manifest["dataset_entry"]["image_ext"] == ".png"
    ds = build_dataset(TranslatedConfig.model_validate(manifest["dataset_entry"]))
    assert ds.names == ["a/x.jpg", "b/y.png"] and int(ds[1]["image"][0, 0, 0]) == 215
    assert (ds[0]["image"].int() - 215).abs().max() <= 3  # the parent was a (lossy) JPEG


def test_tile_grid_and_tiled_inference():
    assert tile_starts(40, 16, 4) == [0, 12, 24] and tile_starts(16, 16, 4) == [0] and tile_starts(8, 16, 4) == [0]
    starts = tile_starts(1916, 512, 64)
    assert all(s % 4 == 0 for s in starts) and starts[-1] + 512 == 1916
    assert Tiling(max_side=16).window(20, 12) == AUTO_TILE and Tiling(max_side=16).window(16, 12) is None
    x = torch.rand(2, 3, 36, 28) * 2 - 1
    point = inverting()
    with torch.no_grad():
        assert torch.allclose(run_tiled(point, x, 12, 4), point(x), atol=1e-6)
        conv = conv_generator()
        whole, tiled = conv(x), run_tiled(conv, x, 16, 8)
        hard = run_tiled(conv, x, 16, 0)  # windows without blending ramps
    diff = (whole - tiled).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15  # receptive field 5 px: only window borders differ
    assert diff.max() < (whole - hard).abs().max() / 3  # the linear blend hides the seams
    images = (torch.rand(2, 3, 30, 22) * 255).to(torch.uint8)  # not multiples of 4: padded and cropped back
    untiled = tr.translate_images(point, images)
    assert untiled.shape == images.shape and torch.equal(untiled, 255 - images[:, [2, 0, 1]])
    assert torch.equal(tr.translate_images(point, images, Tiling(tile=8, overlap=4)), untiled)
    with pytest.raises(DasuiteError, match="multiple of 4"):
        Tiling(tile=30)
    with pytest.raises(DasuiteError, match="overlap"):
        Tiling(tile=16, overlap=16)


def test_resume_after_kill_skips_finished_files_and_rewrites_bad_ones(gta, tmp_path, monkeypatch):
    out = tmp_path / "cycle"
    real_write, calls, lock = tr.write_png, [], threading.Lock()

    def dying_write(array, path):
        with lock:
            calls.append(path)
            if len(calls) > 3:
                raise KeyboardInterrupt("simulated kill")
        return real_write(array, path)

    monkeypatch.setattr(tr, "write_png", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_gta(gta, out)
    monkeypatch.setattr(tr, "write_png", real_write)
    manifest = json.loads((out / tr.MANIFEST).read_text())
    assert manifest["count"] == 3 and not manifest["complete"] and len(manifest["files"]) == 3
    done = sorted(manifest["files"])
    assert sorted(p.name for p in out.glob("*.png")) == done  # no partial file under a final name
    # damage: truncate one finished file, forget another in the manifest (file intact), leave a stale temp file
    bad, forgotten, kept = done
    (out / bad).write_bytes((out / bad).read_bytes()[:40])
    del manifest["files"][forgotten]
    (out / tr.MANIFEST).write_text(json.dumps(manifest))
    (out / f".{bad}.x1y2.tmp").write_bytes(b"partial")
    before = {rel: ((out / rel).stat().st_ino, (out / rel).stat().st_mtime_ns) for rel in (forgotten, kept)}
    again = run_gta(gta, out)
    assert again["complete"] and again["count"] == again["total"] == 5
    assert again["last_pass"] == {"written": 3, "skipped": 2, "verified": False}  # the 2 missing + the truncated one
    for rel, stamp in before.items():  # finished files were not rewritten
        assert ((out / rel).stat().st_ino, (out / rel).stat().st_mtime_ns) == stamp
    for stem in SIZES:
        assert np.array_equal(read(out / f"{stem}.png"), expected(read(gta / f"images/{stem}.png")))
        assert tr.file_sha256(out / f"{stem}.png") == again["files"][f"{stem}.png"]
    assert not list(out.rglob("*.tmp"))
    verified = run_gta(gta, out, verify=True)
    assert verified["last_pass"] == {"written": 0, "skipped": 5, "verified": True}


def test_manifest_content_and_other_settings_refused(gta, tmp_path):
    out = tmp_path / "cycle"
    run_gta(gta, out, tiling=Tiling(tile=8, overlap=4))
    manifest = json.loads((out / tr.MANIFEST).read_text())
    assert {k: manifest[k] for k in PROVENANCE} == PROVENANCE
    assert manifest["total"] == manifest["count"] == 5 and manifest["complete"] and manifest["output"] == "translated"
    assert manifest["tile"] == {"tile": 8, "overlap": 4, "max_side": 2048}
    assert manifest["input_dataset"]["name"] == "gta5" and manifest["input_dataset"]["root"] == str(gta)
    assert manifest["dasuite_version"] and list(manifest["files"]) == [f"{s}.png" for s in SIZES]
    assert all(manifest["files"][rel] == tr.file_sha256(out / rel) for rel in manifest["files"])
    other = {**PROVENANCE, "checkpoint_sha256": "b" * 64}
    with pytest.raises(DasuiteError, match="other settings.*checkpoint_sha256.*--overwrite"):
        run_gta(gta, out, other, tiling=Tiling(tile=8, overlap=4))
    with pytest.raises(DasuiteError, match="other settings.*tile"):
        run_gta(gta, out)
    stamp = (out / "00001.png").stat().st_ino
    replaced = run_gta(gta, out, other, overwrite=True)
    assert replaced["last_pass"]["written"] == 5 and replaced["checkpoint_sha256"] == "b" * 64
    assert (out / "00001.png").stat().st_ino != stamp


def test_toy_is_written_as_a_loadable_folder_dataset(tmp_path):
    entry = ToyConfig(num_images=3, size=(24, 16), split="val", domain="real")
    manifest = tr.translate_dataset(inverting(), entry, tmp_path / "toy", PROVENANCE,  # worker + writer processes
                                    quick(num_workers=1, writers=1))
    assert manifest["output"] == "folder" and manifest["count"] == 3 and len(manifest["files"]) == 6
    ds = build_dataset(FolderConfig.model_validate(manifest["dataset_entry"]))
    toy = build_dataset(entry)
    assert ds.names == [toy[i]["name"] for i in range(3)] == [f"toy_real_val_{i:05d}.png" for i in range(3)]
    for i in range(3):
        image, label = render_toy(0, "real", "val", i, (24, 16))
        assert np.array_equal(ds[i]["image"].permute(1, 2, 0).numpy(), expected(image))
        assert np.array_equal(ds[i]["label"].numpy(), label)
    assert ds.classes.names == toy.classes.names
    experiment = load_config(ROOT / "experiments/toy/source_only_translated.yaml",
                             [f"data.source.root={tmp_path / 'toy'}"])
    assert experiment.data.source.model_dump(mode="json", include={"classes", "palette"}) == {
        k: manifest["dataset_entry"][k] for k in ("classes", "palette")}
    assert len(build_dataset(experiment.data.source)) == 3


def write_run(root: Path, method: str) -> Path:
    """A run directory without checkpoints: config.yaml naming ``method`` (the toy source-only experiment else)."""
    cfg = yaml.safe_load(dump_config(tiny_toy_config(root)))
    cfg["method"] = {"name": method}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_run_errors(tmp_path, gta):
    with pytest.raises(DasuiteError, match="not a dasuite run directory"):
        tr.load_run(tmp_path / "nowhere")
    with pytest.raises(DasuiteError, match="method 'source_only'; translate needs a cyclegan run"):
        tr.load_run(write_run(tmp_path / "so", method="source_only"))
    with pytest.raises(DasuiteError, match="last.pt' does not exist .train it first"):
        tr.load_run(write_run(tmp_path / "cg", "cyclegan"))
    with pytest.raises(DasuiteError, match="unknown --direction 'sideways'"):
        tr.load_run(tmp_path / "cg", direction="sideways")
    camvid = tmp_path / "camvid"
    for folder in ("train", "trainannot"):
        (camvid / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(camvid / folder / "a.png")
    cfg = tiny_toy_config(tmp_path)
    with pytest.raises(DasuiteError, match="'camvid' has no image files to mirror"):
        tr.translate_dataset(inverting(), tr.input_entry(cfg, "source_to_target", "camvid", [f"root={camvid}"]),
                             tmp_path / "o", PROVENANCE, quick())
    with pytest.raises(DasuiteError, match="inside the input images' folder"):
        run_gta(gta, gta / "images" / "cycle")
    result = CliRunner().invoke(main, ["translate", "--run", str(tmp_path / "so"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "translate needs a cyclegan run" in result.output


def test_input_entry_from_run_config_and_overrides(tmp_path, gta):
    cfg = tiny_toy_config(tmp_path)
    toy = tr.input_entry(cfg, "source_to_target")
    assert toy.name == "toy" and toy.size == (64, 48) and toy.num_images == 16 and toy.resize is None
    assert tr.input_entry(cfg, "source_to_target", "toy", ["num_images=3"]).num_images == 3
    gta_entry = tr.input_entry(cfg, "source_to_target", "gta5", [f"root={gta}"])
    assert gta_entry.name == "gta5" and gta_entry.root == str(gta) and gta_entry.split == "all"
    with pytest.raises(DasuiteError, match="data.target is not set.*--input-dataset"):
        tr.input_entry(cfg, "target_to_source")
    with pytest.raises(DasuiteError, match="unknown dataset 'gta6'"):
        tr.input_entry(cfg, "source_to_target", "gta6")
    with pytest.raises(DasuiteError, match="split"):
        tr.input_entry(cfg, "source_to_target", "gta5", ["split=train"])  # gta5 split needs split_file


def test_real_gta5_frame_full_resolution_tiled(shared_data, tmp_path):
    """The real 1914x1052 GTA5 frame (no label: read as an unlabelled folder) through 512-px windows."""
    entry = FolderConfig(root=str(shared_data / "gta5_sample"), images_dir="demo_images", labelled=False,
                         classes=["road"])
    manifest = tr.translate_dataset(inverting(), entry, tmp_path / "cycle", PROVENANCE,
                                    quick(tiling=Tiling(tile=512, overlap=64)))
    translated = read(tmp_path / "cycle/source.png")
    assert translated.shape == (1052, 1914, 3) and manifest["dataset_entry"]["images_root"].endswith("cycle")
    assert np.array_equal(translated, expected(read(shared_data / "gta5_sample/demo_images/source.png")))


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory) -> Path:
    """A real (tiny) toy cyclegan run: 2 iterations, ngf 4, one residual block, 48x32 toy scenes."""
    from dasuite.engine.loop import train
    from dasuite.rundir import RunDir

    tmp = tmp_path_factory.mktemp("cyclegan")
    sizes = [f"data.{role}.{key}" for role in ("source", "target") for key in ("size=[48,32]", "num_images=3",
                                                                               "augment.crop=[32,32]")]
    cfg = load_config(ROOT / "experiments/toy/cyclegan.yaml", [
        f"work_dir={tmp}", "train.max_iters=2", "train.checkpoint_interval=2", "data.num_workers=0", *sizes,
        "method.ngf=4", "method.ndf=4", "method.n_blocks=1", "log.progress_bar=false", "log.tensorboard=false"])
    train(cfg)
    return RunDir.for_config(cfg).root


def test_cli_with_a_real_cyclegan_run(cyclegan_run, tmp_path, gta):
    from dasuite.methods.cyclegan import build_generators

    out = tmp_path / "toy_translated"
    args = ["translate", "--run", str(cyclegan_run), "--out", str(out), "--num-workers", "0", "--writers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 of 3 images translated (3 written, 0 already done)" in result.output
    manifest = json.loads((out / tr.MANIFEST).read_text())
    assert manifest["checkpoint_sha256"] == tr.file_sha256(cyclegan_run / "checkpoints/last.pt")
    cfg = tr.load_run(cyclegan_run)[0]
    reference = build_generators(cfg.method)
    reference.load_state_dict(torch.load(cyclegan_run / "checkpoints/last.pt", weights_only=True)["model"])
    image, _ = render_toy(0, "synthetic", "train", 1, (48, 32))
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        y = ((reference["source_to_target"](x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(read(out / "images/toy_synthetic_train_00001.png"), y[0].permute(1, 2, 0).numpy())
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "(0 written, 3 already done)" in again.output
    back = tr.translate(cyclegan_run, tmp_path / "back", direction="target_to_source", options=quick())
    assert sorted(back["files"])[0] == "images/toy_real_train_00000.png"
    cycle = tr.translate(cyclegan_run, tmp_path / "cycle_gta5", input_dataset="gta5", overrides=[f"root={gta}"],
                         options=quick())
    assert len(build_dataset(TranslatedConfig.model_validate(cycle["dataset_entry"]))) == 5
    other = tmp_path / "other.pt"
    save_torch({"model": nn.ModuleDict({"source_to_target": inverting()}).state_dict()}, other)
    with pytest.raises(DasuiteError, match="weights do not match the run's generators"):
        tr.load_run(cyclegan_run, checkpoint=str(other))


def test_overwrite_killed_then_resumed_never_keeps_files_of_the_replaced_translation(gta, tmp_path, monkeypatch):
    """An --overwrite pass that dies midway leaves files of the old settings that its manifest does not list; the
    rerun (same new settings, no --overwrite) must rewrite them, not trust them because they decode at the size."""
    out = tmp_path / "cycle"
    run_gta(gta, out)  # the old translation, complete
    other = {**PROVENANCE, "checkpoint_sha256": "b" * 64}
    new_generator = inverting(permute=False)
    real_write, calls = tr.write_png, []

    def dying_write(array, path):
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt("simulated kill")
        return real_write(array, path)

    monkeypatch.setattr(tr, "write_png", dying_write)
    with pytest.raises(KeyboardInterrupt):
        tr.translate_dataset(new_generator, GTA5Config(root=str(gta)), out, other, quick(overwrite=True))
    monkeypatch.setattr(tr, "write_png", real_write)
    assert json.loads((out / tr.MANIFEST).read_text())["count"] == 2
    again = tr.translate_dataset(new_generator, GTA5Config(root=str(gta)), out, other, quick())
    assert again["complete"] and again["last_pass"] == {"written": 3, "skipped": 2, "verified": False}
    for stem in SIZES:  # every file is the new generator's output (y = -x: 255 - pixel, channels kept)
        assert np.array_equal(read(out / f"{stem}.png"), 255 - read(gta / f"images/{stem}.png")), stem
