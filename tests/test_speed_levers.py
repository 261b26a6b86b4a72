"""Speed levers: ``train.compile`` (loss trajectory equal to eager; checkpoints are plain state dicts that load into
eager models and back; resume works across compiled and eager), ``train.channels_last`` and
``train.cudnn_benchmark``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dasuite.engine.accelerator import make_accelerator
from dasuite.engine.loop import Trainer
from dasuite.fileio import load_torch
from dasuite.methods import source_only
from dasuite.models import create_model
from dasuite.rundir import RunDir
from tests.conftest import tiny_toy_config, train_interrupted

EXACT = "model.options={drop_path: 0.0, dropout: 0.0}"


def _trajectory(cfg) -> tuple[list[float], Trainer]:
    trainer = Trainer(cfg)
    losses: list[torch.Tensor] = []
    original = trainer.method.training_step

    def step(batches, it):
        out = original(batches, it)
        losses.append(out["loss"].detach().clone())
        return out

    trainer.method.training_step = step
    trainer.fit()
    return [float(v) for v in losses], trainer


def _compare_trajectories(tmp_path, backend: str) -> None:
    eager, _ = _trajectory(tiny_toy_config(tmp_path, "tag=eager", EXACT, max_iters=4))
    compiled, trainer = _trajectory(tiny_toy_config(
        tmp_path, "tag=compiled", EXACT, "train.compile=true", f"train.compile_backend={backend}", max_iters=4))
    assert type(trainer.method.model).__name__ == "OptimizedModule"  # it did compile
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)


def test_compiled_loss_trajectory_matches_eager(tmp_path):
    """aot_eager: dynamo's graph capture and AOTAutograd's joint graph, without code generation (seconds)."""
    _compare_trajectories(tmp_path, "aot_eager")


@pytest.mark.slow
def test_inductor_compiled_loss_trajectory_matches_eager(tmp_path):
    """The default backend, with generated C++ kernels (about two minutes of compilation on a 2-core CPU)."""
    _compare_trajectories(tmp_path, "inductor")


def _no_compile_prefix(state: dict) -> None:
    assert state and not any("_orig_mod" in key for key in state)


def test_compiled_run_checkpoints_load_into_eager_models_and_back(tmp_path, monkeypatch):
    compiled = ("train.compile=true", "train.compile_backend=aot_eager")
    cfg = tiny_toy_config(tmp_path, "tag=compiled", EXACT, *compiled)
    trainer = Trainer(cfg)
    trainer.fit()
    run = RunDir.for_config(cfg)
    last, best = load_torch(run.last), load_file(str(run.best))
    _no_compile_prefix(last["model"])
    _no_compile_prefix(best)
    eager = create_model("segformer_b0", 19, tiny=True, drop_path=0.0, dropout=0.0)
    eager.load_state_dict(best)  # compiled -> eager
    eager.load_state_dict(last["model"])
    # eager -> compiled: a compiled run initialised from an eager model's weights
    init = tmp_path / "eager.safetensors"
    from dasuite.fileio import save_weights

    save_weights(eager.state_dict(), init)
    again = Trainer(tiny_toy_config(tmp_path, "tag=compiled_init", EXACT, *compiled, f"train.init_from={init}"))
    plain = again.accelerator.unwrap_model(again.method.model)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in eager.state_dict().items())


@pytest.mark.parametrize("first, then", [("compiled", "compiled"), ("compiled", "eager"), ("eager", "compiled")])
def test_resume_across_compiled_and_eager(tmp_path, monkeypatch, first, then):
    """An interrupted run resumed compiled or eager continues the uninterrupted run: the same losses from the
    resumed iteration on (eager and compiled numerics differ in rounding only), the same weights when the mode is
    the same."""
    flags = {"compiled": ["train.compile=true", "train.compile_backend=aot_eager"], "eager": []}
    whole, reference = _trajectory(tiny_toy_config(tmp_path, "tag=whole", EXACT, *flags[first]))
    train_interrupted(tiny_toy_config(tmp_path, "tag=cut", EXACT, *flags[first]), source_only.SourceOnly, 4,
                      monkeypatch)
    cfg = tiny_toy_config(tmp_path, "tag=cut", EXACT, *flags[then])
    assert load_torch(RunDir.for_config(cfg).last)["iteration"] == 3
    trainer = Trainer(cfg, resume=True)
    losses: list[torch.Tensor] = []
    original = trainer.method.training_step
    trainer.method.training_step = lambda b, it: (out := original(b, it), losses.append(out["loss"].detach()))[0]
    trainer.fit()
    assert [float(v) for v in losses] == pytest.approx(whole[3:], rel=1e-4, abs=1e-6)
    if first == then:
        expected = load_torch(RunDir.for_config(reference.cfg).last)["model"]
        got = load_torch(RunDir.for_config(cfg).last)["model"]
        for key, value in expected.items():
            assert torch.allclose(got[key].float(), value.float(), rtol=1e-5, atol=1e-6), key


def test_each_run_in_a_process_compiles_as_its_config_says(tmp_path):
    """Accelerate keeps one dynamo plugin per process; dasuite sets each Accelerator's own."""
    compiled = Trainer(tiny_toy_config(tmp_path, "tag=a", "train.compile=true", "train.compile_backend=aot_eager"))
    eager = Trainer(tiny_toy_config(tmp_path, "tag=b"))
    assert type(compiled.method.model).__name__ == "OptimizedModule"
    assert type(eager.method.model).__name__ != "OptimizedModule"
    assert make_accelerator().state.dynamo_plugin.backend.value == "NO"


def test_channels_last_trains_the_same(tmp_path):
    """DeepLab-v2 (no dropout: a dropout mask drawn over channels-last memory falls on other elements)."""
    cfg = lambda tag, *extra: tiny_toy_config(tmp_path, f"tag={tag}", "model.arch=deeplabv2_r50",
                                               "model.options={freeze_bn: false}", *extra, max_iters=3)
    plain, _ = _trajectory(cfg("contiguous"))
    fast, trainer = _trajectory(cfg("channels_last", "train.channels_last=true"))
    model = trainer.accelerator.unwrap_model(trainer.method.model)
    assert model.backbone.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer._next_batches()["source"]["image"].is_contiguous(memory_format=torch.channels_last)
    assert fast == pytest.approx(plain, rel=1e-4, abs=1e-5)


def test_cudnn_benchmark_is_left_alone_on_the_cpu(tmp_path):
    before = torch.backends.cudnn.benchmark
    Trainer(tiny_toy_config(tmp_path, "tag=c", "train.cudnn_benchmark=true"))
    assert torch.backends.cudnn.benchmark == before
