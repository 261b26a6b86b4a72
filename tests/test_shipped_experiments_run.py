"""The shipped GTA5 -> Cityscapes, flagship, pseudo-label and Cityscapes semi-supervised experiments train and evaluate end to end on fake
datasets in the real layouts.

The GTA5 -> Cityscapes and Cityscapes pseudo-label files cannot run here on their datasets, so the wiring is checked
on tiny stand-ins: a GTA5 tree (palette PNG labels), a Cityscapes tree (labelIds + labelTrainIds), a translated
GTA5 image folder (``cycle_gta5``, as ``dasuite translate`` writes it) and a pseudo-labelled Cityscapes folder (as
``dasuite pseudo-label`` writes it). Each file runs as shipped (its datasets, mixes, method options, evaluation
mode) except: tiny model, no pretrained weights, 2 iterations, no loader workers, smaller sizes (below), and for
CycleGAN narrow networks. A file whose dataset, model or method settings do not fit together fails here rather than on a GPU node.
KD files (``kd/cityscapes_cirkd_*``) distil from a random tiny network of their teacher's arch instead of a teacher run.
Toy files that switch on a method block no other test trains end to end (MIC's ``masking``, DAFormer's decoder,
HRDA's wrapper) run the same way on the built-in toy data, with fewer evaluation images.

Every file is also shrunk (``shrink_overrides``): decode sizes and crops above 256 pixels a side and sliding
windows a quarter of their side, at most 2 images a batch, discriminators 8 filters wide. The same wiring runs:
the eleven heaviest files took 280 s at full size on a busy 2-core machine (1024x1024 SegFormer crops in batches of
8, 64-filter discriminators on 1280x720 frames) and take 10 s shrunk.

The DAFormer family (``daformer``, ``hrda``, ``mic_*`` under gta5_to_cityscapes/ and synthia_to_cityscapes/, on a
fake SYNTHIA tree with 16-bit labels) also trains its feature distance, against a tiny frozen MiT-B5 file instead of
ImageNet weights, at reduced sizes (256-pixel decodes, 128 crops, HRDA's 64 detail crop and 128 windows, RCS
min_pixels and the pseudo-label rows scaled down): the shipped 512 / 1024 crops at 2 iterations would cost minutes
on a CPU without testing more wiring. SYNTHIA files also report their 16- / 13-class means.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dasuite.config import load_config
from dasuite.engine.loop import train
from dasuite.report import build_report, collect_runs
from tests.conftest import ROOT
from tests.test_data_cityscapes import write_frame
from tests.test_data_folder_hf import save_label, save_rgb
from tests.test_data_gta5 import write_pair
from tests.test_data_synthia import write_frame as write_synthia_frame

CITYSCAPES_CLASSES = 19
# labelIds that map to Cityscapes train ids (road 7, sidewalk 8, building 11, vegetation 21, sky 23, car 26) and
# one that does not (0, unlabelled): a 36 x 64 label map of horizontal bands
BANDS = np.repeat(np.array([23, 11, 21, 26, 8, 7, 0, 7, 8], np.uint8), 4)[:, None].repeat(64, 1)
# the same classes as SYNTHIA ids (sky 1, building 2, vegetation 6, car 8, sidewalk 4, road 3, void 0)
SYNTHIA_OF_LABEL_ID = {23: 1, 11: 2, 21: 6, 26: 8, 8: 4, 7: 3, 0: 0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$DASUITE_DATA`` with gta5/, synthia/, cityscapes/, cycle_gta5/ and pseudo/cityscapes_train/ (3 or 2 images
    each)."""
    root = tmp_path_factory.mktemp("dasuite_data")
    for i in range(3):
        ids = np.roll(BANDS, 4 * i, axis=0)
        write_pair(root / "gta5", f"{i:05d}", ids)  # 64 x 36 (16:9)
        save_rgb(root / "cycle_gta5" / f"{i:05d}.png", 40 + 60 * i, shape=(36, 64))
        synthia_ids = np.vectorize(SYNTHIA_OF_LABEL_ID.get)(ids).astype(np.uint16)
        write_synthia_frame(root / "synthia", f"{i:07d}", synthia_ids)  # 64 x 36, 16-bit RGB labels
    for split, city in (("train", "aachen"), ("train", "bremen"), ("val", "lindau")):
        write_frame(root / "cityscapes", split, city, f"{city}_000000_000019", np.roll(BANDS, 8, axis=0))
    for split in ("1_16", "1_8", "1_4", "1_2"):  # UniMatch's split lists (image path, label path per line)
        lists = root / "unimatch_splits" / "cityscapes" / split
        lists.mkdir(parents=True)
        for kind, city in (("labeled", "aachen"), ("unlabeled", "bremen")):
            stem = f"leftImg8bit/train/{city}/{city}_000000_000019"
            (lists / f"{kind}.txt").write_text(f"{stem}_leftImg8bit.png gtFine/train/{city}/{city}_gtFine.png\n")
    pseudo = root / "pseudo" / "cityscapes_train"
    for i, stem in enumerate(("aachen_000000_000019", "bremen_000000_000019")):
        save_rgb(pseudo / "images" / f"{stem}.png", 100 + 50 * i, shape=(36, 64))
        train_ids = np.full((36, 64), 255, np.uint8)
        train_ids[: 12 + 6 * i] = 10  # sky, the rest ignored (low confidence)
        save_label(pseudo / "labels" / f"{stem}.png", train_ids)
    return root


CYCLEGAN = "gta5_to_cityscapes/cyclegan_gta2city.yaml"
# every GTA5 -> Cityscapes file (a new one is covered without editing this list), the flagship, the pseudo-label and
# Cityscapes SegFormer files
EXPERIMENTS = ROOT / "experiments"
SEGMENTATION = sorted(
    name for name in (str(p.relative_to(EXPERIMENTS)) for p in [
        *(EXPERIMENTS / "gta5_to_cityscapes").glob("*.yaml"), *(EXPERIMENTS / "synthia_to_cityscapes").glob("*.yaml"),
        EXPERIMENTS / "cutmix_pseudo.yaml",
        *(EXPERIMENTS / "cityscapes").glob("pseudo_label_*.yaml"), *(EXPERIMENTS / "cityscapes").glob("segformer_*.yaml"),
        *(EXPERIMENTS / "cityscapes").glob("unimatch_*.yaml"),
        *(EXPERIMENTS / "cityscapes").glob("deeplabv3_*.yaml"),
        *(EXPERIMENTS / "kd").glob("cityscapes_cirkd_*.yaml")])
    if name != CYCLEGAN)
# toy files with MIC's masked image consistency, DAFormer's decoder or HRDA (a new one is covered without editing
# this list)
TOY_BLOCKS = ("masking:", "decoder: daformer", "arch: hrda")
TOY = sorted(str(p.relative_to(EXPERIMENTS)) for p in (EXPERIMENTS / "toy").glob("*.yaml")
             if any(block in p.read_text() for block in TOY_BLOCKS))
COMMON = ["model.tiny=true", "model.pretrained=null", "train.max_iters=2", "train.eval_interval=2",
          "train.checkpoint_interval=2", "train.log_interval=1", "schedule.warmup_iters=0", "data.num_workers=0",
          "log.progress_bar=false", "log.num_vis_images=1"]


# DAFormer-family files (those with a feature_distance section): reduced sizes, same settings otherwise
SMALL = ["data.source.resize=[256,144]", "data.target.resize=[256,128]", "data.val.resize=[256,128]",
         "data.source.augment.crop=[128,128]", "data.target.augment.crop=[128,128]", "data.source.rcs.min_pixels=1000"]
HRDA_SMALL = ["model.options.detail_crop=[64,64]", "eval.crop=[128,128]", "eval.stride=[64,64]"]


@pytest.fixture(scope="module")
def frozen_b5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MiT-B5 weights file standing in for the ImageNet network of the feature distance."""
    from safetensors.torch import save_file

    from dasuite.models import create_model

    path = tmp_path_factory.mktemp("frozen") / "mit_b5_tiny.safetensors"
    save_file(create_model("segformer_b5", CITYSCAPES_CLASSES, tiny=True).state_dict(), str(path))
    return path


def shrink_overrides(name: str) -> list[str]:
    """Decode sizes, crops and sliding windows above 256 pixels a side at a quarter of their side, batches of at
    most 2, discriminators 8 filters wide; nothing else changes."""
    cfg = load_config(EXPERIMENTS / name, [])
    out = []

    def quarter(key: str, size) -> None:
        if size is not None and max(size) > 256:
            out.append(f"{key}=[{size[0] // 4},{size[1] // 4}]")

    quarter("data.resize", cfg.data.resize)
    for role in ("source", "target", "val"):
        entry = getattr(cfg.data, role, None)
        if entry is not None:
            quarter(f"data.{role}.resize", getattr(entry, "resize", None))  # a mix's entries take data.resize
            if role != "val":
                quarter(f"data.{role}.augment.crop", entry.augment.crop)
    if cfg.eval.mode == "slide":
        quarter("eval.crop", cfg.eval.crop)
        quarter("eval.stride", cfg.eval.stride)
    if cfg.train.batch_size > 2:
        out.append("train.batch_size=2")
        if cfg.train.global_batch_size is not None:
            out.append("train.global_batch_size=2")
    for key, value in (("method.ndf", getattr(cfg.method, "ndf", None)),
                       ("method.adversarial.ndf", getattr(getattr(cfg.method, "adversarial", None), "ndf", None))):
        if value is not None and value > 8:
            out.append(f"{key}=8")
    return out


def family_overrides(name: str, frozen: Path) -> list[str]:
    """The DAFormer family's test overrides (module docstring); none for other files."""
    cfg = load_config(EXPERIMENTS / name, [])
    if cfg.feature_distance is None:
        return []
    network = f"{{checkpoint: {frozen}, arch: segformer_b5, tiny: true}}"
    out = [*SMALL, *(HRDA_SMALL if cfg.model.arch == "hrda" else []), f"feature_distance.network={network}"]
    factor = cfg.data.target.resize[0] // 256  # the target decodes at 256 pixels wide here
    rows, margins = cfg.method.pseudo_ignore, cfg.data.target.augment.pseudo_margins
    if rows is not None:  # DAFormer's crop rows
        out.append(f"method.pseudo_ignore={{top: {rows.top // factor}, bottom: {rows.bottom // factor}}}")
    if margins is not None:  # HRDA's margins of the full image
        out.append(f"data.target.augment.pseudo_margins=[{','.join(str(m // factor) for m in margins)}]")
    return out


def teacher_overrides(name: str, tmp_path: Path) -> list[str]:
    """A KD file's teacher (a run directory) replaced by a random tiny network of its arch; none for other files."""
    cfg = load_config(EXPERIMENTS / name, [])
    teacher = getattr(cfg.method, "teacher", None)  # distill's frozen network (unimatch's is a word: self / ema)
    if getattr(teacher, "run", None) is None:
        return []
    from safetensors.torch import save_file

    from dasuite.models import create_model

    path = tmp_path / "teacher.safetensors"
    save_file(create_model(teacher.arch, CITYSCAPES_CLASSES, tiny=True, **(teacher.options or {})).state_dict(),
              str(path))
    return [f"method.teacher={{checkpoint: {path}, arch: {teacher.arch}, tiny: true}}"]


def run_shipped(name: str, data_root: Path, tmp_path: Path, monkeypatch, *overrides: str) -> Path:
    monkeypatch.setenv("DASUITE_DATA", str(data_root))
    monkeypatch.setenv("UNIMATCH_SPLITS", str(data_root / "unimatch_splits"))
    cfg = load_config(EXPERIMENTS / name, [f"work_dir={tmp_path / 'runs'}", *overrides])
    train(cfg)
    return tmp_path / "runs" / cfg.name / "seed0"


@pytest.mark.parametrize("name", SEGMENTATION)
def test_shipped_segmentation_experiment_trains_and_evaluates(name, data_root, frozen_b5, tmp_path, monkeypatch):
    extra = family_overrides(name, frozen_b5)
    run = run_shipped(name, data_root, tmp_path, monkeypatch, *COMMON, *shrink_overrides(name), *extra,
                      *teacher_overrides(name, tmp_path))
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    assert final["iteration"] == 2 and final["num_images"] == 1  # the one Cityscapes val frame
    assert len(final["iou"]) == CITYSCAPES_CLASSES and math.isfinite(final["mIoU"])
    assert summary["eval_model"] == "student"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.safetensors").is_file()
    if "hrda" in name:  # HRDA's pseudo-label margins of the full image, not DAFormer's crop rows
        used = load_config(run / "config.yaml", [])
        assert used.data.target.augment.pseudo_margins == (3, 30, 3, 3) and used.method.pseudo_ignore is None
    if extra:  # the DAFormer family trained its feature distance (and MIC its masked loss)
        logged = b"".join(p.read_bytes() for p in (run / "tensorboard").glob("events.*"))  # the logged tags
        assert b"loss_fd" in logged and (b"loss_masked" in logged) == name.split("/")[1].startswith("mic_")
    if name.startswith("synthia_to_cityscapes/"):  # 16- and 13-class means, reported across runs
        assert {"mIoU_synthia16", "mIoU_synthia13"} <= set(final)
        report = build_report(collect_runs([run]), split="val", checkpoint="last")
        assert report.metrics[-2:] == ("mIoU_synthia16", "mIoU_synthia13")
        assert report.runs[0].values["mIoU_synthia16"] == final["mIoU_synthia16"]


def test_shipped_cyclegan_experiment_trains_and_translates(data_root, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dasuite.cli import main

    run = run_shipped(CYCLEGAN, data_root, tmp_path, monkeypatch, *COMMON,
                      "method.ngf=8", "method.n_blocks=1", "method.ndf=8", "method.vis_interval=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_model"] is None and (run / "checkpoints" / "last.pt").is_file()
    out = tmp_path / "cycle_gta5"
    args = ["translate", "--run", str(run), "--out", str(out), "--num-workers", "0", "--writers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.rglob("*.png"))
    assert written == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(out / "00000.png").size == (64, 36)  # the parent's full resolution


@pytest.mark.parametrize("name", TOY)
def test_shipped_toy_experiment_trains_and_evaluates(name, tmp_path, monkeypatch):
    run = run_shipped(name, tmp_path, tmp_path, monkeypatch, *COMMON, "data.val.num_images=2", "data.test.num_images=2")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["iteration"] == 2 and summary["test"]["num_images"] == 2
    assert math.isfinite(summary["final"]["mIoU"]) and summary["eval_model"] == "student"
    used = (run / "config.yaml").read_text()  # the run trained with its block (their own tests check the math)
    assert any(block in used for block in TOY_BLOCKS)
