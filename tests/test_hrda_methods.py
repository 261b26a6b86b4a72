"""HRDA (model.arch: hrda) trained through the methods: source-only and the mean teacher (mix, fixmatch, MIC, the
adversarial block) take its fused + detail loss, and DAFormer's feature distance compares its context features with
the frozen network's features of the same downscaled view."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dasuite.engine.loop import train
from dasuite.losses.feature_distance import class_mask, masked_feature_distance
from dasuite.losses.hrda import multires_seg_loss
from dasuite.models import create_model
from tests.conftest import tiny_toy_config

HRDA = ["model.arch=hrda", "model.options={base: segformer_b0, detail_crop: [32, 32]}", "data.source.augment.crop=[64,64]",
        "data.val.size=[96,64]", "data.test.size=[96,64]"]  # the context view of SegFormer needs >= 32 px a side
TARGET = ["data.target.size=[64,48]", "data.target.num_images=16", "data.target.augment.crop=[64,64]"]


def _run_dir(cfg):
    return Path(cfg.work_dir) / cfg.name / cfg.run_tag()


def _summary(cfg) -> dict:
    train(cfg)
    return json.loads((_run_dir(cfg) / "summary.json").read_text())


def test_source_only_trains_hrda_with_its_detail_loss(tmp_path):
    from dasuite.engine.loop import Trainer
    from dasuite.losses import seg_loss

    cfg = tiny_toy_config(tmp_path, *HRDA, max_iters=2)
    method = Trainer(cfg).method
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    output, terms = method.source_losses({"image": images, "label": labels})
    assert type(output).__name__ == "MultiResOutput"
    top, left, height, width = output.box
    detail = seg_loss(output.detail, labels[:, top:top + height, left:left + width])
    torch.testing.assert_close(terms["loss_seg"], 0.9 * seg_loss(output.fused, labels) + 0.1 * detail)
    summary = _summary(cfg)
    assert math.isfinite(summary["final"]["mIoU"]) and summary["final"]["iteration"] == 2


@pytest.mark.parametrize("extra", [
    ["method.mixing=cutmix", "method.masking={patch: 16}"],
    ["method.variant=fixmatch", "method.adversarial={ndf: 8}"],
])
def test_mean_teacher_trains_hrda(extra, tmp_path, monkeypatch):
    from dasuite.methods.mean_teacher import MeanTeacher

    logged, step = [], MeanTeacher.training_step

    def spy(self, batches, i):
        out = step(self, batches, i)
        logged.append({k: float(v.detach()) for k, v in out.items()})
        return out

    monkeypatch.setattr(MeanTeacher, "training_step", spy)
    cfg = tiny_toy_config(tmp_path, *HRDA, *TARGET, "method.threshold=0.0", *extra, max_iters=2,
                          experiment="cutmix_pseudo.yaml")
    summary = _summary(cfg)
    assert math.isfinite(summary["final"]["mIoU"]) and len(logged) == 2
    for losses in logged:
        assert all(math.isfinite(v) for v in losses.values())
        assert losses["loss_seg"] > 0 and losses["loss_unlabelled"] > 0
        assert ("loss_masked" in losses) == ("method.masking={patch: 16}" in extra)
        assert ("loss_adv_main" in losses) == ("method.adversarial={ndf: 8}" in extra)


def test_feature_distance_gives_the_frozen_network_the_context_view(tmp_path):
    torch.manual_seed(3)
    frozen_file = tmp_path / "frozen.safetensors"
    frozen = create_model("segformer_b0", 19, tiny=True).eval()
    save_file(frozen.state_dict(), str(frozen_file))
    fd = {"weight": 1.0, "classes": None, "network": {"checkpoint": str(frozen_file), "arch": "segformer_b0",
                                                      "tiny": True}}
    cfg = tiny_toy_config(tmp_path, *HRDA, f"feature_distance={json.dumps(fd)}", max_iters=1)
    from dasuite.engine.loop import Trainer

    trainer = Trainer(cfg)
    method = trainer.method
    model = trainer.accelerator.unwrap_model(method.model)
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    logits, features = method.source_forward(images)
    terms = method.source_terms({"image": images, "label": labels}, logits, features)
    small = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)  # context view, scale 0.5
    with torch.no_grad():
        expected_frozen = frozen.encoder_features(small)["stage4"]
    student = features["stage4"]
    assert student.shape[-2:] == expected_frozen.shape[-2:] == (1, 1)
    mask = class_mask(labels, tuple(student.shape[-2:]), None, 0.75, 19)
    assert torch.allclose(terms["loss_fd"], masked_feature_distance(student, expected_frozen, mask))
    assert model.feature_input_scale == 0.5
    assert torch.allclose(terms["loss_seg"], multires_seg_loss(logits, labels))


# toy/mic_hrda.yaml (HRDA around SegFormer-B0 with DAFormer's decoder, MIC's masking) shrunk to 64x64 crops
MIC_HRDA = ["model.options.detail_crop=[32,32]", "method.masking.patch=8", "method.threshold=0.0",
            "data.source.augment.crop=[64,64]", "data.val.size=[96,64]", "data.test.size=[96,64]", *TARGET,
            "train.checkpoint_interval=2", "train.eval_interval=2"]


def test_mic_hrda_daformer_resumes_exactly(tmp_path, monkeypatch):
    """The three mechanisms combined: a run interrupted at step 3 and resumed ends with the weights, teacher and
    metrics of an uninterrupted one."""
    from dasuite.fileio import load_torch
    from dasuite.methods.mean_teacher import MeanTeacher
    from dasuite.rundir import RunDir
    from tests.conftest import train_interrupted

    full_cfg = tiny_toy_config(tmp_path, *MIC_HRDA, "tag=full", max_iters=4, experiment="mic_hrda.yaml")
    assert full_cfg.model.options["base_options"] == {"decoder": "daformer"} and full_cfg.method.masking is not None
    full = train(full_cfg)
    cut_cfg = tiny_toy_config(tmp_path, *MIC_HRDA, "tag=cut", max_iters=4, experiment="mic_hrda.yaml")
    train_interrupted(cut_cfg, MeanTeacher, 3, monkeypatch)
    assert load_torch(RunDir.for_config(cut_cfg).last)["iteration"] == 2
    resumed = train(cut_cfg, resume=True)
    a, b = load_torch(RunDir.for_config(full_cfg).last), load_torch(RunDir.for_config(cut_cfg).last)
    for part in ("model", "method"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{part}.{key} differs after resume"
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"] and resumed["final"]["iteration"] == 4


def _flatten(state, prefix: str = "") -> dict:
    """Tensors of a nested checkpoint dict by dotted key."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flatten(value, f"{prefix}.{key}").items()}
    return {}


@pytest.mark.slow
def test_mic_hrda_daformer_on_two_processes_then_resumed_on_one(tmp_path):
    """``torchrun --nproc_per_node 2`` trains MIC(HRDA) with DAFormer's decoder (global batch 4 = 2 x 2), and the
    run continues on one process with the same global batch."""
    from tests.conftest import ROOT, TWO_PROCESS_RUN, two_processes_then_one

    base = [str(ROOT / "experiments" / "toy" / "mic_hrda.yaml"), f"work_dir={tmp_path}", *MIC_HRDA, *TWO_PROCESS_RUN]
    out = two_processes_then_one(base, tmp_path / "toy_mic_hrda" / "seed0")
    assert out["two_processes_state"]["batch"] == {"processes": 2, "micro_batch": 2, "grad_accum": 1}
    assert "teacher" in out["two_processes_state"]["method"] and math.isfinite(out["summary"]["final"]["mIoU"])
