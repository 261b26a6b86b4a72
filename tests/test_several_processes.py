"""Several processes without traps: ``train.global_batch_size`` -> per-process micro-batch and accumulation,
the learning-rate rule (none; linear scaling only with ``optim.lr_reference_batch``), ``model.sync_bn``, and
``--resume`` with another number of processes (continues with the same global batch, refuses another)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from dasuite.config.schema import TrainConfig
from dasuite.engine.loop import Trainer, sync_batchnorm
from dasuite.errors import ConfigError, DasuiteError
from dasuite.fileio import load_torch, save_torch
from dasuite.models import create_model
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config


@pytest.mark.parametrize("global_batch, cap, processes, expected", [
    (16, 4, 1, (4, 4)), (16, 4, 2, (4, 2)), (16, 4, 4, (4, 1)), (16, 4, 8, (2, 1)), (16, 4, 16, (1, 1)),
    (12, 5, 1, (4, 3)), (12, 8, 2, (6, 1)), (6, 4, 3, (2, 1)), (7, 4, 1, (1, 7)), (8, 8, 1, (8, 1)),
])
def test_global_batch_gives_micro_batch_and_accumulation(global_batch, cap, processes, expected):
    train = TrainConfig(global_batch_size=global_batch, batch_size=cap)
    assert train.per_process(processes) == expected
    micro, accum = expected
    assert micro <= cap and micro * accum * processes == global_batch == train.global_batch(processes)


def test_global_batch_that_does_not_divide_names_the_numbers():
    with pytest.raises(ConfigError, match=r"global_batch_size=16 does not divide over 3 processes: run on "
                                          r"1, 2, 4, 8, 16 processes, or set a multiple of 3"):
        TrainConfig(global_batch_size=16).per_process(3)
    with pytest.raises(ConfigError, match="over 32 processes"):
        TrainConfig(global_batch_size=16).per_process(32)


def test_without_global_batch_the_batch_is_per_process():
    train = TrainConfig(batch_size=4, grad_accum=2)
    assert train.per_process(4) == (4, 2) and train.global_batch(4) == 32


def test_grad_accum_is_derived_not_given_with_a_global_batch():
    with pytest.raises(ValidationError, match="grad_accum .* is derived from global_batch_size"):
        TrainConfig(global_batch_size=16, grad_accum=2)


def test_engine_uses_the_derived_split(tmp_path):
    trainer = Trainer(tiny_toy_config(tmp_path, "train.global_batch_size=6", "train.batch_size=4", max_iters=2))
    assert (trainer.micro_batch, trainer.grad_accum, trainer.global_batch) == (3, 2, 6)
    assert trainer.accelerator.gradient_accumulation_steps == 2
    assert next(trainer.loaders["source"])["image"].shape[0] == 3
    trainer.fit()
    assert load_torch(RunDir.for_config(trainer.cfg).last)["batch"] == {
        "processes": 1, "micro_batch": 3, "grad_accum": 2}


def test_learning_rate_is_not_scaled_unless_asked(tmp_path):
    plain = Trainer(tiny_toy_config(tmp_path, "tag=a", "optim.lr=0.001", "train.global_batch_size=4"))
    assert {g["lr"] for g in plain.optimizer.param_groups} == {0.001}
    scaled = Trainer(tiny_toy_config(tmp_path, "tag=b", "optim.lr=0.001", "train.global_batch_size=4",
                                     "optim.lr_reference_batch=16", "optim.head_lr_mult=10"))
    lrs = {g["group"]: g["initial_lr"] for g in scaled.optimizer.param_groups}
    assert lrs["body"] == pytest.approx(0.001 * 4 / 16) and lrs["head"] == pytest.approx(0.01 * 4 / 16)


def test_sync_bn_converts_trainable_batchnorm_only_under_several_gpu_processes():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    net = create_model("deeplabv3plus_r50", 5, tiny=True)
    bns = count(net, torch.nn.BatchNorm2d)
    assert sync_batchnorm(net, 1, "cuda") is net and sync_batchnorm(net, 4, "cpu") is net
    synced = sync_batchnorm(net, 4, "cuda")
    assert count(synced, torch.nn.SyncBatchNorm) == bns > 0 and count(synced, torch.nn.BatchNorm2d) == 0
    frozen = create_model("deeplabv2_r50", 5, tiny=True, freeze_bn=True)
    assert count(sync_batchnorm(frozen, 4, "cuda"), torch.nn.SyncBatchNorm) == 0
    trainable = create_model("deeplabv2_r50", 5, tiny=True, freeze_bn=False)
    assert count(sync_batchnorm(trainable, 4, "cuda"), torch.nn.SyncBatchNorm) > 0


def _written_by(cfg, processes: int, micro: int, accum: int) -> None:
    """Make ``cfg``'s last.pt look as if ``processes`` x ``micro`` x ``accum`` had written it."""
    path = RunDir.for_config(cfg).last
    state = load_torch(path)
    state["batch"] = {"processes": processes, "micro_batch": micro, "grad_accum": accum}
    state["rng"] = state["rng"] * processes
    save_torch(state, path)


def test_resume_with_another_process_count_and_the_same_global_batch_continues(tmp_path, caplog):
    cfg = tiny_toy_config(tmp_path, "train.global_batch_size=4", "train.batch_size=4", max_iters=3)
    Trainer(cfg).fit()
    _written_by(cfg, 2, 2, 1)  # global batch 4 on 2 processes; this run: 1 process x 4
    longer = tiny_toy_config(tmp_path, "train.global_batch_size=4", "train.batch_size=4", max_iters=4)
    with caplog.at_level(logging.WARNING, logger="dasuite.engine.loop"):
        trainer = Trainer(longer, resume=True)
    assert trainer.iteration == 3
    assert "written by 2 process(es), this run has 1" in caplog.text and "not bit-identical" in caplog.text
    trainer.fit()


def test_resume_with_another_global_batch_is_refused_in_one_line(tmp_path):
    cfg = tiny_toy_config(tmp_path, max_iters=3)  # batch 2 per process, no global batch
    Trainer(cfg).fit()
    _written_by(cfg, 2, 2, 1)  # as if 2 processes had trained it: global batch 4; now 1 x 2 = 2
    with pytest.raises(DasuiteError) as err:
        Trainer(cfg, resume=True)
    message = str(err.value)
    assert "\n" not in message and "global batch of 4 (2 process(es) x 2 x 1 accumulation)" in message
    assert "this run's is 2 (1 x 2 x 1): set train.global_batch_size=4" in message


def test_resume_of_a_checkpoint_without_the_batch_record(tmp_path):
    cfg = tiny_toy_config(tmp_path, max_iters=3)
    Trainer(cfg).fit()
    path = RunDir.for_config(cfg).last
    state = load_torch(path)
    del state["batch"]  # written before the record existed: loaders' batch size and RNG states tell
    save_torch(state, path)
    assert Trainer(cfg, resume=True).iteration == 3
    state["rng"] = state["rng"] * 2
    save_torch(state, path)
    with pytest.raises(DasuiteError, match="global batch of 4"):
        Trainer(cfg, resume=True)


TINY = ["train.batch_size=2", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
        "schedule.warmup_iters=0", "data.num_workers=0", "data.source.size=[48,32]", "data.source.num_images=8",
        "data.source.augment.crop=[32,32]", "data.val.size=[48,32]", "data.val.num_images=2",
        "data.test.size=[48,32]", "data.test.num_images=2", "log.progress_bar=false", "eval.batch_size=2"]
TOY = str(ROOT / "experiments" / "toy" / "source_only.yaml")


def _dasuite(work: Path, processes: int, *overrides: str, resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "dasuite"]
    else:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(processes), "-m", "dasuite"]
    args = [*cmd, "run", TOY, f"work_dir={work}", *TINY, *overrides, *(["--resume"] if resume else [])]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


@pytest.mark.slow
def test_two_cpu_processes_then_one_with_the_same_global_batch(tmp_path):
    """``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``: 2 x micro-batch 2 for a global batch of 4; resumed on
    one process it accumulates 2 x 2; without a global batch the same resume is refused."""
    fixed = ["train.global_batch_size=4", "train.batch_size=2"]
    two = _dasuite(tmp_path / "g", 2, *fixed, "train.max_iters=2")
    assert two.returncode == 0, two.stderr[-3000:]
    last = tmp_path / "g" / "toy_source_only" / "seed0" / "checkpoints" / "last.pt"
    assert load_torch(last)["batch"] == {"processes": 2, "micro_batch": 2, "grad_accum": 1}
    assert len(load_torch(last)["rng"]) == 2
    one = _dasuite(tmp_path / "g", 1, *fixed, "train.max_iters=4", resume=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "not bit-identical" in one.stderr
    state = load_torch(last)
    assert state["iteration"] == 4 and state["batch"] == {"processes": 1, "micro_batch": 2, "grad_accum": 2}

    per_process = _dasuite(tmp_path / "p", 2, "train.max_iters=2")
    assert per_process.returncode == 0, per_process.stderr[-3000:]
    refused = _dasuite(tmp_path / "p", 1, "train.max_iters=4", resume=True)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert refused.returncode != 0 and len(errors) == 1
    assert "global batch of 4" in errors[0] and "train.global_batch_size=4" in errors[0]
