"""The ``distill`` method's wiring: every KD term reaches the student's gradient, the teacher never changes,
projectors train and survive resume, teacher sources and config errors, the two-stage schedule."""

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from dasuite.config import load_config
from dasuite.engine.loop import Trainer, train
from dasuite.errors import ConfigError, DasuiteError
from dasuite.fileio import load_torch
from dasuite.losses import seg_loss
from dasuite.methods import distill
from dasuite.models import create_model
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config, train_interrupted

NUM_CLASSES = 19  # the toy dataset uses the Cityscapes class table
TERMS_ALONE = {
    "kl": "method.kl={weight: 1.0, temperature: 4.0}",
    "at": "method.at={weight: 1000.0}",
    "sp": "method.sp={weight: 1.0, pairs: [{student: decoder, teacher: decoder}]}",
    "cwd": "method.cwd={weight: 1.0, pairs: [{student: decoder, teacher: decoder}]}",  # 32 vs 64 ch: projector
    "freq": "method.freq={weight: 0.1, ratio: 0.2, high: l1}",
}
ALL_TERMS = [v for v in TERMS_ALONE.values()]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished tiny SegFormer-B2 toy run (2 iterations) to distil from."""
    root = tmp_path_factory.mktemp("teacher")
    cfg = tiny_toy_config(root, "model.arch=segformer_b2", "name=teacher", "data.test=null", "log.tensorboard=false",
                          max_iters=2)
    train(cfg)
    return RunDir.for_config(cfg).root


def kd_config(tmp_path, teacher, *overrides, max_iters=6):
    """The toy KD experiment shrunk like ``tiny_toy_config``, with all terms off unless ``overrides`` set them."""
    return tiny_toy_config(tmp_path, f"method.teacher.run={teacher}", "method.kl=null", "method.freq=null",
                           "data.test=null", "log.tensorboard=false", *overrides, max_iters=max_iters,
                           experiment="../kd/toy_b2_to_b0.yaml")


def build(cfg, reference=None):
    method = distill.Distill(cfg, NUM_CLASSES)
    if reference is not None:
        method.model.load_state_dict(reference.model.state_dict())
    method.setup(Accelerator(cpu=True))
    return method


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, NUM_CLASSES, (2, 48, 48), generator=gen)
    label[:, :5] = 255
    return {"image": torch.randn(2, 3, 48, 48, generator=gen), "label": label, "name": ["a", "b"]}


def student_step(method, batch):
    """One training step (dropout/drop-path seeded) -> (losses, student grads by name)."""
    for module in (method.model, method.projectors):
        module.train().zero_grad(set_to_none=True)
    torch.manual_seed(123)
    losses = method.training_step({"source": batch}, 0)
    losses["loss"].backward()
    return losses, {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher_run, batch):
    """The method with every term off, and its losses and student gradients on ``batch``."""
    off = build(kd_config(tmp_path_factory.mktemp("off"), teacher_run))
    return (off, *student_step(off, batch))


def test_terms_come_from_the_registry():
    """Each registered term is a ``method.<name>`` key (off by default) and a contract-test loss term, added in
    ``order``; the built-in five keep their order."""
    from dasuite.registry import DISTILL_TERMS

    assert set(distill.TERMS) == set(DISTILL_TERMS.names())
    assert distill.TERMS[:5] == ("kl", "at", "sp", "cwd", "freq")
    fields = distill.DistillConfig.model_fields
    assert all(fields[name].default is None and fields[name].description.endswith("null = off.")
               for name in distill.TERMS)
    assert [t.name for t in distill.Distill.loss_terms][2:-1] == list(distill.TERMS)  # after task, seg_aux


def test_all_off_equals_plain_cross_entropy(reference, batch):
    off, losses, grads = reference
    assert off.active == [] and off.extra_modules() == ()
    assert set(losses) == {"loss", "loss_seg"}
    off.model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    seg_loss(off.model(batch["image"]), batch["label"]).backward()
    assert all(torch.equal(grads[n], p.grad) for n, p in off.model.named_parameters())


@pytest.mark.parametrize("term", list(TERMS_ALONE))
def test_each_term_alone_changes_student_gradient_and_weight_zero_does_not(tmp_path, teacher_run, batch, reference,
                                                                         term):
    off, losses_off, grads_off = reference
    on = build(kd_config(tmp_path, teacher_run, TERMS_ALONE[term]), reference=off)
    losses, grads_on = student_step(on, batch)
    assert on.active == [term]
    assert torch.allclose(losses["loss"], losses["loss_seg"] + losses[f"loss_{term}"])
    assert losses[f"loss_{term}"] > 0
    assert torch.equal(losses["loss_seg"], losses_off["loss_seg"])
    changed = [n for n in grads_off if not torch.equal(grads_off[n], grads_on[n])]
    assert changed, f"{term} never reached the student's gradient"
    assert any(n.startswith("segformer.") for n in changed), "the encoder gets no KD gradient"
    # teacher: frozen, eval mode, no gradient
    assert not on.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in on.teacher.parameters())
    # the same term with weight 0 leaves the gradient bit-identical to "off"
    zero = build(kd_config(tmp_path, teacher_run, TERMS_ALONE[term].replace("weight: 1000.0", "weight: 0")
                           .replace("weight: 1.0", "weight: 0").replace("weight: 0.1", "weight: 0")), reference=off)
    assert zero.active == []
    _, grads_zero = student_step(zero, batch)
    assert all(torch.equal(grads_off[n], grads_zero[n]) for n in grads_off)


@pytest.mark.parametrize("term", ["cwd", "freq"])
def test_projector_created_for_channel_mismatch_and_gets_gradient(tmp_path, teacher_run, batch, term):
    method = build(kd_config(tmp_path, teacher_run, TERMS_ALONE[term]))
    projector = method.projectors[f"{term}0"]
    assert (projector.in_channels, projector.out_channels) == (32, 64)  # tiny B0 -> tiny B2 decoder widths
    assert method.extra_modules() == ("projectors",)
    student_step(method, batch)
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    # at / sp / kl need no projector; cwd on logits neither (same classes)
    none = build(kd_config(tmp_path, teacher_run, TERMS_ALONE["at"], TERMS_ALONE["sp"], TERMS_ALONE["kl"],
                           "method.cwd={weight: 1.0}"))
    assert len(none.projectors) == 0


def test_engine_training_keeps_teacher_bit_identical_and_trains_projectors(tmp_path, teacher_run):
    cfg = kd_config(tmp_path, teacher_run, *ALL_TERMS, max_iters=4)
    trainer = Trainer(cfg)
    method = trainer.method
    assert method.active == ["kl", "at", "sp", "cwd", "freq"]
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    projector_init = {k: v.clone() for k, v in method.projectors.state_dict().items()}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in method.projectors.parameters())
    assert not any(id(p) in in_optimizer for p in method.teacher.parameters())
    trainer.fit()
    after = method.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = load_file(str(RunDir(teacher_run).best))
    assert all(torch.equal(saved[k], after[k]) for k in saved)
    assert not method.teacher.training
    assert any(not torch.equal(projector_init[k], v) for k, v in method.projectors.state_dict().items())


def test_resume_restores_projectors(tmp_path, teacher_run, monkeypatch):
    overrides = (TERMS_ALONE["freq"], TERMS_ALONE["kl"])
    short = ("train.checkpoint_interval=2", "train.eval_interval=2")
    full_cfg = kd_config(tmp_path / "full", teacher_run, *overrides, *short, max_iters=4)
    train(full_cfg)
    cfg = kd_config(tmp_path / "cut", teacher_run, *overrides, *short, max_iters=4)
    train_interrupted(cfg, distill.Distill, 3, monkeypatch)
    saved = load_torch(RunDir.for_config(cfg).last)
    assert saved["iteration"] == 2 and set(saved["extras"]) == {"projectors"}
    assert saved["method"]["teacher_source"].endswith("best.safetensors")
    trainer = Trainer(cfg, resume=True)
    restored = trainer.accelerator.unwrap_model(trainer.method.projectors).state_dict()
    assert all(torch.equal(restored[k], v) for k, v in saved["extras"]["projectors"].items())
    summary = trainer.fit()
    full = load_torch(RunDir.for_config(full_cfg).last)["extras"]["projectors"]
    resumed = load_torch(RunDir.for_config(cfg).last)["extras"]["projectors"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert summary["final"]["mIoU"] == load_torch(RunDir.for_config(full_cfg).last)["final"]["mIoU"]


def test_resume_refuses_a_changed_teacher(tmp_path, teacher_run):
    method = build(kd_config(tmp_path, teacher_run))
    state = method.state_dict()
    method.load_state_dict(state)  # same teacher: fine
    with pytest.raises(DasuiteError, match="teacher's weights changed"):
        method.load_state_dict({**state, "teacher_checksum": state["teacher_checksum"] + 1.0})


def test_teacher_sources_run_placeholder_checkpoint_and_overrides(tmp_path, teacher_run):
    saved = load_file(str(RunDir(teacher_run).best))
    by_seed = build(kd_config(tmp_path, str(teacher_run).replace("seed0", "seed{seed}")))
    assert all(torch.equal(by_seed.teacher.state_dict()[k], v) for k, v in saved.items())
    in_work_dir = build(kd_config(tmp_path, '"{work_dir}/teacher/seed{seed}"', f"work_dir={teacher_run.parents[1]}"))
    assert in_work_dir.teacher_source == str(RunDir(teacher_run).best)
    weights = tmp_path / "teacher.safetensors"
    save_file(saved, str(weights))
    cfg = tiny_toy_config(tmp_path, f"method.teacher={{checkpoint: {weights}, arch: segformer_b2, tiny: true}}",
                          "method.kl={weight: 1.0}", experiment="../kd/toy_b2_to_b0.yaml")
    from_file = build(cfg)
    assert all(torch.equal(from_file.teacher.state_dict()[k], v) for k, v in saved.items())
    wrong_arch = kd_config(tmp_path, teacher_run, "method.teacher.arch=segformer_b0")
    with pytest.raises(DasuiteError, match="do not fit segformer_b0"):
        build(wrong_arch)
    with pytest.raises(DasuiteError, match="not a dasuite run directory"):
        build(kd_config(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no \\(single\\) fold"):
        build(kd_config(tmp_path, str(teacher_run) + "{fold}"))


@pytest.mark.parametrize("override, message", [
    ("method.teacher={}", "exactly one of run, checkpoint, pretrained"),
    ("method.teacher={checkpoint: x.safetensors}", "checkpoint needs arch"),
    ("method.freq={high: regularise}", "method.freq.high"),
    ("method.kl={weight: -1}", "method.kl.weight"),
    ("method.freq={ratio: 1.5}", "method.freq.ratio"),
])
def test_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_toy_config(tmp_path, override, experiment="../kd/toy_b2_to_b0.yaml")


def test_unknown_feature_name_lists_valid_ones(tmp_path, teacher_run):
    cfg = kd_config(tmp_path, teacher_run, "method.at={pairs: [{student: stage9, teacher: stage1}]}")
    with pytest.raises(ConfigError, match="student feature 'stage9'.*stage1, stage2, stage3, stage4, decoder, logits"):
        build(cfg)


def test_two_stage_constant_then_step_with_init_from(tmp_path):
    """The notes' schedule (fixed LR, then step LR from that checkpoint) on the toy scale: a random tiny DeepLabV3+
    R101 teacher file, the Cityscapes experiment pair with toy data and tiny models."""
    teacher = create_model("deeplabv3plus_r101", NUM_CLASSES, tiny=True)
    weights = tmp_path / "teacher.safetensors"
    save_file(teacher.state_dict(), str(weights))
    toy = ["data.source={name: toy, domain: synthetic, split: train, size: [48, 48], num_images: 8}",
           "data.val={name: toy, domain: real, split: val, size: [48, 48], num_images: 2}", "data.num_workers=0",
           "model.tiny=true", "model.pretrained=null",
           f"method.teacher={{checkpoint: {weights}, arch: deeplabv3plus_r101, tiny: true}}", "train.batch_size=2",
           "train.eval_interval=4", "train.checkpoint_interval=4", "log.progress_bar=false", "log.num_vis_images=0",
           "log.tensorboard=false", "eval.batch_size=2", f"work_dir={tmp_path / 'runs'}"]
    first = load_config(ROOT / "experiments/kd/cityscapes_r101_to_mbv2_stage1.yaml", [*toy, "train.max_iters=2"])
    assert first.schedule.name == "constant" and first.method.kl.weight == 0.3
    train(first)
    best = RunDir.for_config(first).best
    second = load_config(ROOT / "experiments/kd/cityscapes_r101_to_mbv2_stage2.yaml",
                         [*toy, "train.max_iters=3", "schedule.milestones=[2]"], {"train.init_from": str(best)})
    assert second.schedule.name == "step"
    trainer = Trainer(second)
    loaded = trainer.accelerator.unwrap_model(trainer.method.model).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in load_file(str(best)).items())
    assert trainer.iteration == 0
    factor = trainer.scheduler.lr_lambdas[0]
    assert [factor(it) for it in range(3)] == pytest.approx([1.0, 1.0, 0.1])
    summary = trainer.fit()
    assert summary["final"]["iteration"] == 3
