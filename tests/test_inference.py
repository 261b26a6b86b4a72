"""Inference modes (dasuite/engine/inference.py): sliding window, multi-scale and flip, in evaluation, `dasuite eval`
and `dasuite pseudo-label`, exact where they must be and checked by hand where they average."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate import launchers
from click.testing import CliRunner
from torch import nn

from dasuite.cli import main
from dasuite.config import load_config
from dasuite.config.schema import EvalConfig
from dasuite.data import build_dataset
from dasuite.engine.evaluate import evaluate
from dasuite.engine.inference import predict, slide_logits, window_starts
from dasuite.engine.loop import train
from dasuite.errors import ConfigError
from dasuite.models import create_model
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config


def settings(**kw) -> EvalConfig:
    return EvalConfig(**kw)


class Pointwise(nn.Module):
    """1x1 convolutions only: no spatial context, equivariant to flips and crops."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, k, 1))

    def forward(self, x):
        return self.net(x)


class Local(nn.Module):
    """Two 3x3 convolutions at stride 1: each output pixel sees a 5x5 neighbourhood (radius 2)."""

    radius = 2

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def test_window_starts_follow_mmseg():
    assert window_starts(2048, 1024, 768) == [0, 768, 1024]
    assert window_starts(1024, 1024, 768) == [0]
    assert window_starts(500, 1024, 768) == [0]  # a window larger than the image is the image
    assert window_starts(10, 4, 3) == [0, 3, 6]


def test_slide_with_a_window_covering_the_image_equals_whole_exactly():
    torch.manual_seed(0)
    model = create_model("segformer_b0", 19, tiny=True).eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        whole = predict(model, images, (48, 64))
        slide = predict(model, images, (48, 64), settings(mode="slide", crop=(64, 48)))
        larger = predict(model, images, (96, 128), settings(mode="slide", crop=(200, 100), stride=(10, 10)))
        whole_larger = predict(model, images, (96, 128))
    assert torch.equal(whole, slide) and torch.equal(larger, whole_larger)


def test_overlapping_windows_equal_whole_where_windows_see_the_whole_neighbourhood():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 50)
    pointwise, local = Pointwise().eval(), Local().eval()
    s = settings(mode="slide", crop=(20, 16), stride=(13, 11), window_batch=3)
    with torch.no_grad():
        assert (predict(pointwise, images, (40, 50), s) - pointwise(images)).abs().max() < 1e-5
        slid, whole = slide_logits(local, images, (20, 16), (13, 11), 3), local(images)
    # pixels at least `radius` away from the inner edges of every window containing them match exactly
    r = local.radius
    good = torch.ones(40, 50, dtype=torch.bool)
    for y in window_starts(40, 16, 11):
        for x in window_starts(50, 20, 13):
            inner = torch.zeros(40, 50, dtype=torch.bool)
            inner[y:y + 16, x:x + 20] = True
            ok = torch.zeros(40, 50, dtype=torch.bool)
            ok[max(y + r, 0) if y > 0 else 0:(y + 16 - r) if y + 16 < 40 else 40,
               max(x + r, 0) if x > 0 else 0:(x + 20 - r) if x + 20 < 50 else 50] = True
            good &= ~inner | ok
    diff = (slid - whole).abs().amax(1)[0]
    assert good.sum() > 200 and diff[good].max() < 1e-5
    assert diff[~good].max() > 1e-4  # zero padding at window edges does change the rest: the check is not vacuous


def test_flip_of_a_flip_equivariant_network_equals_no_flip():
    torch.manual_seed(0)
    model, images = Pointwise().eval(), torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        plain = predict(model, images, (24, 32)).softmax(1)
        flipped = predict(model, images, (24, 32), settings(flip=True)).softmax(1)
    assert (plain - flipped).abs().max() < 1e-6


def test_multi_scale_averages_probabilities_at_the_output_resolution():
    torch.manual_seed(0)
    model, images = create_model("segformer_b0", 7, tiny=True).eval(), torch.randn(1, 3, 64, 96)
    out = (80, 120)
    with torch.no_grad():
        got = predict(model, images, out, settings(scales=[0.5, 1.0], flip=True))
        passes = []
        for size in ((32, 48), (64, 96)):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False) if size != (64, 96) else images
            for flip in (False, True):
                logits = model(x.flip(-1) if flip else x)
                logits = F.interpolate(logits, size=out, mode="bilinear", align_corners=False)
                passes.append((logits.flip(-1) if flip else logits).softmax(1))
        expected = torch.stack(passes).mean(0)
    assert got.shape == (1, 7, 80, 120)
    assert (got.exp() - expected).abs().max() < 1e-6


def test_slide_and_tta_settings_are_checked():
    with pytest.raises(ConfigError, match="mode slide needs crop"):
        load_config(ROOT / "experiments" / "toy" / "source_only.yaml", ["eval.mode=slide"])
    with pytest.raises(ConfigError, match="larger than crop"):
        load_config(ROOT / "experiments" / "toy" / "source_only.yaml",
                    ["eval.mode=slide", "eval.crop=[32,32]", "eval.stride=[40,8]"])
    with pytest.raises(ConfigError, match="eval.scales"):
        load_config(ROOT / "experiments" / "toy" / "source_only.yaml", ["eval.scales=[0.5,-1]"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    cfg = tiny_toy_config(tmp, max_iters=3)
    train(cfg)
    return cfg, RunDir.for_config(cfg)


def _eval_json(run: RunDir, *options: str) -> dict:
    result = CliRunner().invoke(main, ["eval", "--run-dir", str(run.root), "--split", "test", "--format", "json",
                                       *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_eval_cli_options_select_the_modes(trained):
    _, run = trained
    plain = _eval_json(run)
    covering = _eval_json(run, "--mode", "slide", "--crop", "64,48")
    assert covering["iou"] == plain["iou"] and covering["mean_loss"] == plain["mean_loss"]
    tta = _eval_json(run, "--mode", "slide", "--crop", "32,32", "--stride", "16,16", "--scales", "0.75,1.0",
                     "--flip")
    assert tta["num_images"] == plain["num_images"] and tta["iou"] != plain["iou"]


def test_pseudo_labels_use_the_same_modes(trained, tmp_path):
    _, run = trained
    args = ["pseudo-label", "--run-dir", str(run.root), "--dataset-role", "test", "--checkpoint", "last"]
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")])
    slide = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "slide"), "--mode", "slide", "--crop", "64,48"])
    tta = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "tta"), "--scales", "0.75,1.0", "--flip"])
    assert whole.exit_code == slide.exit_code == tta.exit_code == 0, whole.output + slide.output + tta.output
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole" / "labels").rglob("*.png"))
    assert files and all((tmp_path / "slide" / f).read_bytes() == (tmp_path / "whole" / f).read_bytes() for f in files)
    assert any((tmp_path / "tta" / f).read_bytes() != (tmp_path / "whole" / f).read_bytes() for f in files)
    manifest = json.loads((tmp_path / "tta" / "manifest.json").read_text())
    assert manifest["inference"]["scales"] == [0.75, 1.0] and manifest["inference"]["flip"] is True


def _two_process_slide(cfg_dict, expected):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the fork may carry the parent's 1-process state
    cfg = load_config(ROOT / "experiments" / "toy" / "source_only.yaml", [], cfg_dict)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = create_model("segformer_b0", 19, tiny=True)
    dataset = build_dataset(cfg.data.test, resize_labels=False)
    result, _ = evaluate(model, dataset, accelerator, dataset.classes, inference=cfg.eval, batch_size=2)
    assert accelerator.num_processes == 2
    assert result["iou"] == expected["iou"] and result["num_images"] == expected["num_images"]


def test_two_process_slide_evaluation_equals_one_process():
    values = {"data.test.size": [64, 48], "data.test.num_images": 6, "eval.mode": "slide", "eval.crop": [32, 32],
              "eval.stride": [24, 20], "eval.scales": [0.75, 1.0], "eval.flip": True}
    cfg = load_config(ROOT / "experiments" / "toy" / "source_only.yaml", [], values)
    torch.manual_seed(0)
    model = create_model("segformer_b0", 19, tiny=True)
    dataset = build_dataset(cfg.data.test, resize_labels=False)
    single, _ = evaluate(model, dataset, Accelerator(cpu=True), dataset.classes, inference=cfg.eval, batch_size=2)
    launchers.debug_launcher(_two_process_slide, args=(values, single), num_processes=2)


def test_predict_without_settings_is_whole_image_inference():
    model = Pointwise().eval()
    images = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(predict(model, images, (8, 8), None), model(images))
        assert torch.equal(predict(model, images, (8, 8), SimpleNamespace(mode="whole")), model(images))
