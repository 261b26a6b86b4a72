"""The contract every registered method meets, checked for each one the registry knows (a new method is covered the
moment it registers): two steps run on the toy data with a tiny model; every loss term its config can switch on
(``Method.loss_terms``) changes the gradient of the modules it should reach and of no other; its ``state_dict``
round-trips through a checkpoint and a resumed run equals an uninterrupted one; ``eval_model()`` evaluates.
Plus gradient accumulation: 2 x 4 accumulated equals one batch of 8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator

from dasuite.config import load_config
from dasuite.engine.loop import Trainer, train
from dasuite.fileio import load_torch, save_torch, save_weights
from dasuite.methods import METHODS
from dasuite.models import create_model
from dasuite.models.frozen import FrozenModelConfig, fill_run_placeholders
from dasuite.rundir import RunDir
from tests.conftest import ROOT, train_interrupted

NUM_CLASSES = 19  # the toy benchmark uses the Cityscapes classes
TINY = [
    "train.batch_size=2", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
    "schedule.warmup_iters=0", "data.num_workers=0", "eval.batch_size=4", "log.progress_bar=false",
    "log.num_vis_images=0", "data.source.size=[40,32]", "data.source.num_images=8",
    "data.source.augment.crop=[32,32]", "data.val.size=[40,32]", "data.val.num_images=2", "data.test.size=[40,32]",
    "data.test.num_images=2", "model.options={drop_path: 0.0, dropout: 0.0}",
]
TARGET = {"name": "toy", "domain": "real", "split": "train", "size": [40, 32], "num_images": 8,
          "augment": {"scale": [1.0, 1.0], "crop": [32, 32]}}


def method_config(tmp_path: Path, name: str, extra: dict[str, Any] | None = None, max_iters: int = 2):
    """The toy source-only experiment turned into a tiny run of method ``name`` (its ``toy_overrides`` applied,
    then ``extra``); frozen networks it names by checkpoint are created when absent."""
    cls = METHODS.get(name)
    values: dict[str, Any] = {"work_dir": str(tmp_path / "runs"), "train.max_iters": max_iters,
                              "method": {"name": name}}
    if "target" in cls.domains:
        values["data.target"] = TARGET
    if not cls.evaluates:
        values.update({"data.val": None, "data.test": None})
    values.update(cls.toy_overrides)
    values.update(extra or {})
    cfg = load_config(ROOT / "experiments" / "toy" / "source_only.yaml", TINY, values)
    _materialise_frozen(cfg, cfg)
    return cfg


def _materialise_frozen(node: Any, cfg) -> None:
    """Write a random tiny network for every ``FrozenModelConfig`` with a ``checkpoint`` that does not exist yet."""
    if isinstance(node, FrozenModelConfig):
        if node.checkpoint:
            path = Path(fill_run_placeholders(node.checkpoint, cfg, "frozen"))
            if not path.is_file():
                torch.manual_seed(123)
                net = create_model(node.arch, NUM_CLASSES, tiny=bool(node.tiny), **(node.options or {}))
                save_weights(net.state_dict(), path)
        return
    for value in getattr(node, "__dict__", {}).values():
        if hasattr(type(value), "model_fields"):
            _materialise_frozen(value, cfg)


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def _batches(cfg) -> dict:
    trainer = Trainer(cfg)
    return trainer._next_batches()


def _gradients(cfg, batches: dict, accelerator) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of one training step from identical initial weights and random draws."""
    torch.manual_seed(0)
    method = METHODS.get(cfg.method.name)(cfg, NUM_CLASSES)
    method.setup(accelerator)
    modules = method.trainable_modules()
    for module in modules.values():
        module.train().zero_grad(set_to_none=True)
    torch.manual_seed(1)
    losses = method.training_step(batches, 0)
    assert torch.isfinite(losses["loss"]), losses
    losses["loss"].backward()
    return {name: {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                   for k, p in module.named_parameters()} for name, module in modules.items()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Some gradient of ``a`` differs from ``b``'s; a parameter only ``a`` has (a layer the term adds to a module
    that exists either way, e.g. a projector next to another term's) counts when it gets a gradient."""
    return any(a[k].abs().sum() > 0 if k not in b else not torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-8)
               for k in a)


METHOD_TERMS = [pytest.param(name, term, id=f"{name}-{term.name}")
                for name in METHODS.names() for term in METHODS.get(name).loss_terms]


@pytest.mark.parametrize(("name", "term"), METHOD_TERMS)
def test_each_loss_term_reaches_exactly_its_modules(tmp_path, accelerator, name, term):
    on = method_config(tmp_path, name, {**term.context, term.config_key: term.on})
    off = method_config(tmp_path, name, {**term.context, term.config_key: term.off})
    batches = _batches(on)
    grads_on, grads_off = _gradients(on, batches, accelerator), _gradients(off, batches, accelerator)
    for module in term.reaches:
        assert module in grads_on, f"{name}: term {term.name} should reach {module!r}, which the method lacks"
        if module in grads_off:
            assert _changed(grads_on[module], grads_off[module]), f"{term.name} does not reach {module}"
        else:  # created by the term itself (e.g. a KD projector): it must get a gradient
            assert any(g.abs().sum() > 0 for g in grads_on[module].values()), f"{module} gets no gradient"
    for module in set(grads_on) & set(grads_off) - set(term.reaches):
        assert not _changed(grads_on[module], grads_off[module]), f"{term.name} reaches {module}, it should not"


@pytest.mark.parametrize("name", METHODS.names())
def test_two_steps_state_round_trip_resume_and_evaluation(tmp_path, monkeypatch, name):
    full_cfg = method_config(tmp_path, name, {"tag": "full"}, max_iters=4)
    full = train(full_cfg)
    assert full["final"] is None or full["final"]["iteration"] == 4
    cfg = method_config(tmp_path, name, {"tag": "cut"}, max_iters=4)
    train_interrupted(cfg, METHODS.get(name), 2, monkeypatch)
    resumed = train(cfg, resume=True)
    run_full, run_cut = RunDir.for_config(full_cfg), RunDir.for_config(cfg)
    a, b = load_torch(run_full.last), load_torch(run_cut.last)
    _assert_same(a["model"], b["model"], "model weights")
    _assert_same(a["method"], b["method"], "method state")
    assert _without_timing({**resumed, "tag": "full"}) == _without_timing(full)  # the same metrics, exactly
    # state_dict round trip through a checkpoint file
    trainer = Trainer(cfg, resume=True)
    save_torch(trainer.method.state_dict(), tmp_path / "method.pt")
    trainer.method.load_state_dict(load_torch(tmp_path / "method.pt"))
    _assert_same(trainer.method.state_dict(), b["method"], "method state after a round trip")
    if METHODS.get(name).evaluates:
        assert full["test"]["mIoU"] is not None and full["test"]["num_images"] == 2
        out = trainer.method.eval_model()(torch.zeros(1, 3, 32, 32))
        assert out.shape[:2] == (1, NUM_CLASSES)
    else:
        assert full["best"] is None and "test" not in full


def _without_timing(summary: Any) -> Any:
    if isinstance(summary, dict):
        return {k: _without_timing(v) for k, v in summary.items() if k != "sec_per_image"}
    return summary


def _assert_same(a: Any, b: Any, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert set(a) == set(b), what
        for key in a:
            _assert_same(a[key], b[key], f"{what}[{key}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for x, y in zip(a, b):
            _assert_same(x, y, what)
    else:
        assert a == b, what


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """A model without batch statistics or stochastic depth (DeepLabV2, frozen BN): 2 x 4 accumulated = 1 x 8."""
    common = {"model.arch": "deeplabv2_r50", "model.options": {"multi_level": False}, "train.max_iters": 1,
              "data.val": None, "data.test": None, "data.source.augment": {"enabled": False},
              "data.source.num_images": 8, "optim.lr": 0.01}
    weights = []
    for batch, accum in ((8, 1), (4, 2)):
        cfg = method_config(tmp_path / f"b{batch}", "source_only",
                            {**common, "train.batch_size": batch, "train.grad_accum": accum})
        train(cfg)
        weights.append(load_torch(RunDir.for_config(cfg).last)["model"])
    start = create_model("deeplabv2_r50", NUM_CLASSES, tiny=True, multi_level=False).state_dict()
    moved = max((weights[0][k].float() - start[k].float()).abs().max().item() for k in start
                if start[k].is_floating_point())
    diff = max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in start)
    assert moved > 1e-3 and diff < 1e-5 * max(1.0, moved), (moved, diff)
