"""``train.grad_checkpointing``: every model family gives the same loss, gradients and BatchNorm statistics with
its encoder blocks checkpointed (features for KD included, drop-path on, bf16 autocast), and the methods train the
same with it through the engine."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from dasuite.engine.loop import Trainer
from dasuite.errors import ConfigError
from dasuite.losses import seg_loss
from dasuite.models import create_model
from dasuite.models.base import SegModel
from dasuite.models.segformer import SegFormer
from tests.conftest import ROOT
from tests.test_method_contract import method_config

MODELS = [
    ("segformer_b0", {"drop_path": 0.0, "dropout": 0.0}),
    ("segformer_b2", {"drop_path": 0.2, "dropout": 0.0}),  # drop-path: the recomputation draws the same masks
    ("deeplabv3plus_r50", {}),
    ("deeplabv3plus_mobilenetv2", {}),
    ("deeplabv2_r101", {"freeze_bn": False}),
    ("deeplabv2_r50", {"freeze_bn": True}),
]


def _step(model, images, labels, autocast: bool = False):
    """Loss on the logits plus a feature term (the KD path), backward; gradients, BN buffers and the RNG after."""
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, features = model(images, return_features=True)
        loss = seg_loss(logits, labels) + sum(f.float().pow(2).mean() for f in features.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}, torch.get_rng_state()


def _pair(arch, options, own=False):
    torch.manual_seed(0)
    plain = create_model(arch, 5, tiny=True, **options).train()
    saving = copy.deepcopy(plain)
    if own:
        saving.use_transformers_checkpointing = False
    saving.set_grad_checkpointing(True)
    return plain, saving


@pytest.mark.parametrize("arch, options", MODELS)
def test_checkpointing_gives_the_same_loss_gradients_and_statistics(arch, options):
    plain, saving = _pair(arch, options)
    images, labels = torch.randn(2, 3, 48, 64), torch.randint(0, 5, (2, 48, 64))
    (l1, g1, b1, r1), (l2, g2, b2, r2) = _step(plain, images, labels), _step(saving, images, labels)
    assert torch.allclose(l1, l2, rtol=1e-6, atol=1e-6)
    assert g1.keys() == g2.keys() and len(g1) == len(list(plain.parameters()))
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-5, atol=1e-6), name
    for name in b1:  # running statistics updated once, not twice
        assert torch.equal(b1[name], b2[name]), name
    assert torch.equal(r1, r2)  # the recomputation leaves the random stream where the plain step does


def test_segformer_blocks_checkpointed_by_dasuite_when_transformers_cannot():
    plain, saving = _pair("segformer_b0", {"drop_path": 0.1, "dropout": 0.0}, own=True)
    assert saving._own_checkpointing
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    (l1, g1, _, _), (l2, g2, _, _) = _step(plain, images, labels), _step(saving, images, labels)
    assert torch.allclose(l1, l2, atol=1e-6)
    assert all(torch.allclose(g1[n], g2[n], rtol=1e-5, atol=1e-6) for n in g1)


@pytest.mark.parametrize("arch, options", [MODELS[0], MODELS[2]])
def test_checkpointing_under_bf16_autocast(arch, options):
    plain, saving = _pair(arch, options)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    (l1, g1, _, _), (l2, g2, _, _) = (_step(plain, images, labels, autocast=True),
                                      _step(saving, images, labels, autocast=True))
    assert torch.allclose(l1, l2, rtol=1e-3)
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=2e-2, atol=1e-3), name


def test_checkpointing_is_off_in_eval_and_without_gradients():
    _, saving = _pair("deeplabv3plus_r50", {})
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        saving(images)  # no recomputation to prepare for: runs as usual
    saving.eval()
    assert saving(images).requires_grad


def test_a_model_without_checkpointing_says_so():
    class Plain(SegModel):
        feature_channels = {}

    with pytest.raises(ConfigError, match="grad_checkpointing"):
        Plain().set_grad_checkpointing(True)


def _final_weights(cfg) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg)
    trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.method.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method, extra", [
    ("mean_teacher", {}),
    ("distill", {"method.kl": None, "method.at": {"weight": 1000.0}}),  # features of student and teacher
])
def test_methods_train_the_same_with_checkpointing(tmp_path, method, extra):
    off = method_config(tmp_path, method, {**extra, "tag": "off"})
    on = method_config(tmp_path, method, {**extra, "tag": "on", "train.grad_checkpointing": True})
    plain, saving = _final_weights(off), _final_weights(on)
    for name in plain:
        assert torch.allclose(plain[name].float(), saving[name].float(), rtol=1e-4, atol=1e-5), name


def test_engine_turns_it_on_with_bf16(tmp_path):
    """In its own process: Accelerate's mixed-precision state is fixed once per process."""
    script = textwrap.dedent(f"""
        from dasuite.config import load_config
        from dasuite.engine.loop import Trainer
        cfg = load_config({str(ROOT / "experiments" / "toy" / "source_only.yaml")!r}, [
            "work_dir={tmp_path}", "train.max_iters=2", "train.batch_size=2", "train.grad_checkpointing=true",
            "train.mixed_precision=bf16", "data.num_workers=0", "data.source.size=[40,32]",
            "data.source.num_images=4", "data.source.augment.crop=[32,32]", "data.val=null", "data.test=null",
            "log.progress_bar=false", "model.arch=deeplabv3plus_mobilenetv2"])
        trainer = Trainer(cfg)
        assert trainer.accelerator.mixed_precision == "bf16"
        assert trainer.accelerator.unwrap_model(trainer.method.model).backbone.grad_checkpointing
        trainer.fit()
        print("trained")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "trained" in out.stdout, out.stderr[-2000:]


def test_segformer_flag_reaches_transformers_layers():
    model = create_model("segformer_b0", 5, tiny=True)
    assert isinstance(model, SegFormer)
    model.set_grad_checkpointing(True)
    layers = [m for m in model.segformer.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)
    model.set_grad_checkpointing(False)
    assert not any(m.gradient_checkpointing for m in layers)
