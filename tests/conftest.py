"""Shared fixtures: tiny toy experiments that train in seconds on the CPU, and the shared real-data folder."""

import os
from pathlib import Path

import pytest
import torch

from dasuite.config import load_config

# One intra-op thread: the models in tests are tiny, and on a 2-core machine shared with loader workers or other
# jobs, oversubscribed OpenMP threads make each step many times slower. The engine respects OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DASUITE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def tiny_toy_config(tmp_path: Path, *overrides: str, max_iters: int = 6, experiment: str = "source_only.yaml"):
    """The shipped toy experiment shrunk to a few iterations on 64x48 images with few eval images."""
    base = [
        f"work_dir={tmp_path / 'runs'}", f"train.max_iters={max_iters}", "train.batch_size=2",
        "train.eval_interval=3", "train.checkpoint_interval=3", "train.log_interval=1",
        "schedule.warmup_iters=0", "data.num_workers=0", "eval.batch_size=4",
        "data.source.size=[64,48]", "data.source.num_images=16", "data.source.augment.crop=[48,48]",
        "data.val.size=[64,48]", "data.val.num_images=4", "data.test.size=[64,48]", "data.test.num_images=4",
        "log.progress_bar=false", "log.num_vis_images=2",
    ]
    return load_config(ROOT / "experiments" / "toy" / experiment, [*base, *overrides])


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def train_interrupted(cfg, method_cls, crash_step: int, monkeypatch) -> None:
    """Run ``cfg`` until ``method_cls.training_step`` is called for ``crash_step``, where a simulated crash
    (KeyboardInterrupt) stops it; the method is restored afterwards so a ``--resume`` run proceeds normally."""
    from dasuite.engine.loop import train

    original = method_cls.training_step

    def crash(self, batches, step):
        if step == crash_step:
            raise KeyboardInterrupt("simulated crash")
        return original(self, batches, step)

    monkeypatch.setattr(method_cls, "training_step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(method_cls, "training_step", original)


def resumed_teacher_matches_uninterrupted(full_cfg, cfg, method_cls, monkeypatch, crash_step: int = 4) -> dict:
    """Train ``full_cfg`` straight through, and ``cfg`` (same settings, another work dir) crashed at ``crash_step``
    then resumed; assert equal final and test metrics and an equal EMA teacher; ``cfg``'s resumed summary."""
    from dasuite.engine.loop import train
    from dasuite.fileio import load_torch
    from dasuite.rundir import RunDir

    full = train(full_cfg)
    train_interrupted(cfg, method_cls, crash_step, monkeypatch)
    resumed = train(cfg, resume=True)
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"] and resumed["test"]["iou"] == full["test"]["iou"]
    a = load_torch(RunDir.for_config(full_cfg).last)["method"]["teacher"]
    b = load_torch(RunDir.for_config(cfg).last)["method"]["teacher"]
    assert a["updates"] == b["updates"] == full_cfg.train.max_iters
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    return resumed


#: small-run settings of ``two_processes_then_one`` (global batch 4: 2 processes x 2, then 1 x 2 x 2 accumulation)
TWO_PROCESS_RUN = [
    "train.global_batch_size=4", "train.batch_size=2", "train.log_interval=1", "schedule.warmup_iters=0",
    "data.num_workers=0", "eval.batch_size=2", "data.source.size=[64,48]", "data.source.num_images=8",
    "data.val.num_images=2", "data.test.num_images=2", "log.progress_bar=false", "log.num_vis_images=0"]


def two_processes_then_one(base: list[str], run_dir: Path) -> dict:
    """``torchrun --nproc_per_node 2 -m dasuite run`` of ``base`` for 2 iterations, then ``--resume`` on one process
    to 4 with the same global batch (``base`` sets ``train.global_batch_size``); the resumed run's summary."""
    import json
    import subprocess
    import sys

    from dasuite.fileio import load_torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "-m", "dasuite", "run"]
    two = subprocess.run([*torchrun, *base, "train.max_iters=2"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.pt"
    state = load_torch(last)
    assert state["batch"]["processes"] == 2 and state["batch"]["grad_accum"] == 1
    one = subprocess.run([sys.executable, "-m", "dasuite", "run", *base, "train.max_iters=4", "--resume"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    after = load_torch(last)["batch"]
    assert after["processes"] == 1 and after["grad_accum"] == 2 * state["batch"]["grad_accum"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["iteration"] == 4
    return {"summary": summary, "two_processes_state": state}

