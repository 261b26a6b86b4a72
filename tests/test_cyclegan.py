"""The ``cyclegan`` method: defaults, loss composition, where each gradient goes, semantic consistency, and real
engine runs on the toy data (no evaluation, checkpoint layout, TensorBoard grids, bit-identical resume)."""

import json

import pytest
import torch

from dasuite.config import load_config
from dasuite.engine.loop import Trainer, train
from dasuite.errors import DasuiteError
from dasuite.fileio import load_torch, save_weights
from dasuite.methods import cyclegan
from dasuite.methods.cyclegan import CycleGANConfig, build_generators, from_tanh_range, to_tanh_range
from dasuite.models import create_model
from dasuite.models.gan import PatchDiscriminator
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config

TINY = ["data.val=null", "data.test=null", "data.target.size=[64,48]", "data.target.num_images=16",
        "data.target.augment.crop=[48,48]", "method.ngf=4", "method.n_blocks=1", "method.ndf=4",
        "method.vis_interval=0"]


def cg_config(tmp_path, *overrides, max_iters=4):
    return tiny_toy_config(tmp_path, *TINY, *overrides, max_iters=max_iters, experiment="cyclegan.yaml")


def test_defaults_are_cyclegans():
    o = CycleGANConfig()
    assert (o.ngf, o.n_blocks, o.ndf, o.n_layers, o.objective) == (64, 9, 64, 3, "lsgan")
    assert (o.cycle_weight, o.identity_weight, o.pool_size, o.semantic) == (10.0, 0.5, 50, None)
    d = o.discriminator
    assert (d.lr, d.betas, d.weight_decay, d.schedule.name, d.schedule.decay_start) == (2e-4, (0.5, 0.999), 0.0,
                                                                                         "linear", 0.5)
    g = build_generators(o)
    assert sorted(g) == ["source_to_target", "target_to_source"]
    # the reference implementation's printed sizes: resnet_9blocks 11.378 M, basic PatchGAN 2.765 M parameters
    assert sum(p.numel() for p in g["source_to_target"].parameters()) == 11_378_179
    d_net = PatchDiscriminator(3, 64, 3)
    assert sum(p.numel() for p in d_net.parameters()) == 2_764_737


def test_range_conversions_roundtrip():
    from dasuite.data.augment import normalize

    images = torch.randint(0, 256, (2, 3, 4, 5))
    x = to_tanh_range(normalize(images))
    assert torch.allclose(x, images / 127.5 - 1, atol=1e-5)
    assert torch.allclose(from_tanh_range(x), normalize(images), atol=1e-4)


def test_shipped_experiments_validate():
    toy = load_config(ROOT / "experiments" / "toy" / "cyclegan.yaml")
    gta = load_config(ROOT / "experiments" / "gta5_to_cityscapes" / "cyclegan_gta2city.yaml")
    for cfg in (toy, gta):
        assert cfg.method.name == "cyclegan" and cfg.data.val is None and cfg.data.test is None
        assert cfg.optim.betas == (0.5, 0.999) and cfg.schedule.name == "linear" and cfg.train.batch_size == 1
    assert gta.method.n_blocks == 9 and gta.data.source.augment.crop == (256, 256)


def _step(trainer, batches):
    torch.manual_seed(0)
    return trainer.method.training_step(batches, 0)


def test_loss_composition_follows_the_weights(tmp_path):
    trainer = Trainer(cg_config(tmp_path, "method.pool_size=0"))
    method, batches = trainer.method, trainer._next_batches()
    base = _step(trainer, batches)
    parts = ("loss_adv", "loss_cycle", "loss_identity", "loss_d_target", "loss_d_source")
    assert all(base[k] > 0 for k in parts)
    expected = base["loss_adv"] + 10 * base["loss_cycle"] + 5 * base["loss_identity"] + base["loss_d_target"] + \
        base["loss_d_source"]
    assert base["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    method.options.cycle_weight = 20.0  # identity is relative to the cycle weight: 10 -> 20 doubles both
    doubled = _step(trainer, batches)
    assert (doubled["loss"] - base["loss"]).item() == pytest.approx(
        (10 * base["loss_cycle"] + 5 * base["loss_identity"]).item(), rel=1e-5)
    method.options.cycle_weight, method.options.identity_weight = 10.0, 0.0
    no_identity = _step(trainer, batches)
    assert "loss_identity" not in no_identity
    assert (base["loss"] - no_identity["loss"]).item() == pytest.approx(5 * base["loss_identity"].item(), rel=1e-5)
    assert {"d_target_real", "d_target_fake", "lr_d_target", "lr_d_source"} <= set(base)


def _grads(modules):
    return [p.grad for m in modules for p in m.parameters()]


def test_generator_terms_reach_only_the_generators_and_d_terms_only_d(tmp_path):
    trainer = Trainer(cg_config(tmp_path))
    method, batches = trainer.method, trainer._next_batches()
    generators, discriminators = list(method.model.values()), list(method.adversary.modules.values())
    real_s, real_t = to_tanh_range(batches["source"]["image"]), to_tanh_range(batches["target"]["image"])
    out = method.model(real_s, real_t)
    total_g, _ = method.generator_losses(batches, real_s, real_t, out)
    total_d, _ = method.discriminator_losses(real_s, real_t, out)
    total_g.backward(retain_graph=True)
    assert all(g is None for g in _grads(discriminators))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(generators)[:1] + _grads(generators)[-1:])
    method.model.zero_grad(set_to_none=True)
    total_d.backward()
    assert all(g is None for g in _grads(generators))
    for d in discriminators:  # every discriminator learns from its real and pooled fake images
        assert sum(g.abs().sum() for g in _grads([d])) > 0
    # G's adversarial term alone: the gradient reaches G_st (whose output D_t judges), not D_t
    method.model.zero_grad(set_to_none=True)
    method.adversary.optimizer.zero_grad(set_to_none=True)
    method.adversary.generator_loss("target", method.model["source_to_target"](real_s)).backward()
    assert all(g is None for g in _grads(discriminators) + _grads([method.model["target_to_source"]]))
    assert sum(g.abs().sum() for g in _grads([method.model["source_to_target"]])) > 0


@pytest.fixture
def segmenter_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "segmenter.safetensors"
    save_weights(create_model("segformer_b0", 19, tiny=True).state_dict(), path)
    return path


@pytest.mark.parametrize("labels", ["segmenter", "ground_truth"])
def test_semantic_consistency_reaches_the_generators(tmp_path, segmenter_weights, labels):
    semantic = [f"method.semantic.segmenter.checkpoint={segmenter_weights}",
                "method.semantic.segmenter.arch=segformer_b0", "method.semantic.segmenter.tiny=true",
                f"method.semantic.labels={labels}", "method.semantic.weight=3.0",
                "method.cycle_weight=0", "method.pool_size=0"]
    trainer = Trainer(cg_config(tmp_path, *semantic))
    method, batches = trainer.method, trainer._next_batches()
    assert not any(p.requires_grad for p in method.segmenter.parameters())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in method.segmenter.parameters()}

    def generator_grads():
        method.model.zero_grad(set_to_none=True)
        losses = _step(trainer, batches)
        losses["loss"].backward()
        return losses, [torch.cat([p.grad.flatten() for p in g.parameters()]) for g in method.model.values()]

    losses, with_sem = generator_grads()
    assert losses["loss_semantic"] > 0
    assert losses["loss"].item() == pytest.approx((losses["loss_adv"] + 3 * losses["loss_semantic"] +
                                                   losses["loss_d_target"] + losses["loss_d_source"]).item(), rel=1e-6)
    segmenter, method.segmenter = method.segmenter, None
    _, without = generator_grads()
    method.segmenter = segmenter
    assert not torch.allclose(with_sem[0], without[0]) and not torch.allclose(with_sem[1], without[1])
    method.options.semantic.target_direction = False  # G_ts now gets no semantic gradient
    _, source_only = generator_grads()
    assert torch.allclose(source_only[1], without[1]) and not torch.allclose(source_only[0], without[0])


def test_validation_data_is_a_clear_error(tmp_path):
    cfg = cg_config(tmp_path, "data.val={name: toy, domain: real, split: val, num_images: 2}")
    with pytest.raises(DasuiteError, match="data.val"):
        Trainer(cfg)


def test_end_to_end_run_writes_generators_and_no_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cg_config(tmp_path, "method.vis_interval=2", "method.pool_size=3")
    summary = train(cfg)
    run = RunDir.for_config(cfg)
    assert summary["best"] is None and summary["final"] is None and "test" not in summary and summary["eval_model"] is None
    assert json.loads(run.summary.read_text())["best"] is None
    assert not run.best.exists() and (not run.metrics.exists() or run.metrics.read_text() == "")
    state = load_torch(run.last)
    assert state["iteration"] == 4 and {k.split(".")[0] for k in state["model"]} == {"source_to_target",
                                                                                       "target_to_source"}
    build_generators(cfg.method).load_state_dict(state["model"])  # the contract `dasuite translate` relies on
    method = state["method"]
    assert set(method["adversary"]["discriminators"]) == {"target", "source"}
    assert method["pools"]["target"]["count"] == 3 and method["pools"]["target"]["images"].shape == (3, 3, 48, 48)
    events = EventAccumulator(str(run.root / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = [t for t in events.Tags()["images"] if t.startswith("cyclegan/")]
    assert sorted(tags) == ["cyclegan/source_real_translated_reconstructed",
                            "cyclegan/target_real_translated_reconstructed"]
    image = events.Images(tags[0])
    assert [e.step for e in image] == [2, 4] and (image[0].width, image[0].height) == (3 * 48, 2 * 48)
    assert {"train/loss_cycle", "train/loss_d_target", "train/lr_d_target"} <= set(events.Tags()["scalars"])


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    from tests.conftest import train_interrupted

    overrides = ("method.pool_size=3", "train.checkpoint_interval=2")
    full_cfg = cg_config(tmp_path / "full", *overrides, max_iters=6)
    train(full_cfg)
    cfg = cg_config(tmp_path / "cut", *overrides, max_iters=6)
    train_interrupted(cfg, cyclegan.CycleGAN, 3, monkeypatch)
    assert load_torch(RunDir.for_config(cfg).last)["iteration"] == 2
    train(cfg, resume=True)
    a, b = load_torch(RunDir.for_config(full_cfg).last), load_torch(RunDir.for_config(cfg).last)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    da, db = a["method"]["adversary"], b["method"]["adversary"]
    for name in ("target", "source"):
        assert all(torch.equal(v, db["discriminators"][name][k]) for k, v in da["discriminators"][name].items())
        assert torch.equal(a["method"]["pools"][name]["images"], b["method"]["pools"][name]["images"])
    assert da["scheduler"] == db["scheduler"]
