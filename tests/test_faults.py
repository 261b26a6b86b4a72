"""Faults a user meets, each refused with one line and nothing lost: broken and mismatched checkpoints, a full disk,
temp files of killed writes, unreadable images inside DataLoader workers, labels that decode to nothing, a launcher
that started more processes than Accelerate joined. (The re-runnable suite with real kills, interrupts and a real
full filesystem is tools/fault_suite.py, run by tests/test_fault_suite.py with ``-m slow``.)"""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from dasuite.cli import main
from dasuite.engine.loop import train
from dasuite.errors import DasuiteError, DiskFullError, one_line
from dasuite.fileio import atomic_write, load_torch, load_weights, save_weights
from dasuite.models import create_model
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config

TOY = str(ROOT / "experiments" / "toy" / "source_only.yaml")
TINY = ["train.max_iters=2", "train.batch_size=2", "train.eval_interval=2", "train.checkpoint_interval=2",
        "data.num_workers=0", "data.source.size=[48,32]", "data.source.num_images=4",
        "data.source.augment.crop=[32,32]", "data.val.size=[48,32]", "data.val.num_images=2",
        "data.test.size=[48,32]", "data.test.num_images=2", "log.progress_bar=false"]


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("Error: "), result.output
    errors = [l for l in lines if l.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


# ------------------------------------------------------------------------------------------ broken checkpoints
@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    save_weights(create_model("segformer_b0", 19, tiny=True).state_dict(), good)
    data = good.read_bytes()
    files = {"good": good}
    files["truncated"] = tmp_path / "truncated.safetensors"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"] = tmp_path / "empty.safetensors"
    files["empty"].write_bytes(b"")
    files["pickle"] = tmp_path / "pickle.safetensors"
    torch.save({"model": {}}, files["pickle"])
    files["foreign"] = tmp_path / "foreign.safetensors"
    files["foreign"].write_bytes(b"GIF89a not weights at all" * 10)
    files["wide"] = tmp_path / "wide.safetensors"
    save_weights(create_model("segformer_b0", 19, tiny=False).state_dict(), files["wide"])
    files["evil"] = tmp_path / "evil.pt"
    files["evil"].write_bytes(pickle.dumps({"model": Evil()}))
    return files


class Evil:
    def __reduce__(self):  # would run a shell command if unpickled
        return (print, ("UNPICKLED",))


@pytest.mark.parametrize(("kind", "says"), [
    ("truncated", "truncated"), ("empty", "empty (0 bytes)"), ("pickle", "a PyTorch .pt/.pth archive"),
    ("foreign", "not a safetensors file"), ("wide", "weight shapes do not match"),
    ("evil", "pickled Python objects"),
])
def test_broken_or_mismatched_weights_are_one_line_everywhere(tmp_path, weights, kind, says):
    path = weights[kind]
    line = _one_line_error(_cli("eval", "--config", TOY, "--checkpoint", str(path), *TINY))
    assert str(path) in line and says in line
    line = _one_line_error(_cli("run", TOY, "--init-from", str(path), f"work_dir={tmp_path / 'r'}", *TINY))
    assert str(path) in line and says in line
    teacher = f"method={{name: distill, teacher: {{checkpoint: {path}, arch: segformer_b0, tiny: true}}, kl: {{}}}}"
    line = _one_line_error(_cli("run", TOY, teacher, f"work_dir={tmp_path / 't'}", *TINY))
    assert "method.teacher" in line and str(path) in line and says in line


def test_width_mismatch_names_the_first_tensors(weights):
    with pytest.raises(DasuiteError) as err:
        from dasuite.models.weights import load_model_weights

        load_model_weights(create_model("segformer_b0", 19, tiny=True), weights["wide"])
    message = str(err.value)
    assert "\n" not in message and "checkpoint vs model" in message and "(32, 3, 7, 7) vs (8, 3, 7, 7)" in message


# ---------------------------------------------------------------------------------------------- full disk
def test_full_disk_names_the_file_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_toy_config(tmp_path, max_iters=6)
    import dasuite.engine.loop as loop

    real = loop.save_torch

    def fill_up(obj, path):
        if obj["iteration"] == 6:  # the disk fills up at the second checkpoint
            def write(f):
                f.write(b"x" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
            atomic_write(path, write)
        real(obj, path)

    monkeypatch.setattr(loop, "save_torch", fill_up)
    with pytest.raises(DiskFullError) as err:
        train(cfg)
    message = str(err.value)
    run = RunDir.for_config(cfg)
    assert f"no space left on device while writing {run.last}" in message
    assert f"last good checkpoint is {run.last} (iteration 3)" in message and "--resume" in message
    assert load_torch(run.last)["iteration"] == 3  # the old checkpoint is intact
    assert not list(run.checkpoints.glob(".*.tmp")), "a temp file was left behind"


def test_full_disk_from_a_library_is_one_line_at_the_cli(monkeypatch, tmp_path):
    import dasuite.engine.runs as runs

    def boom(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534: "
                           "No space left on device")
    monkeypatch.setattr(runs, "plan_runs", boom)
    line = _one_line_error(_cli("run", TOY))
    assert "no space left on device" in line


def test_stale_temp_files_of_killed_writes_are_removed_on_the_next_start(tmp_path, monkeypatch):
    cfg = tiny_toy_config(tmp_path, max_iters=3)
    train(cfg)
    run = RunDir.for_config(cfg)
    stale = [run.checkpoints / ".last.pt.abc123.tmp", run.root / ".metrics.jsonl.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"")  # what a SIGKILL during a write leaves
    cfg = tiny_toy_config(tmp_path, max_iters=6)
    train(cfg, resume=True)
    assert not any(path.exists() for path in stale)


# ------------------------------------------------------------------------------- data: workers, labels, check
@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder dataset of 6 pairs (labels 0..2) whose image 3 is truncated."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (32, 48), dtype=np.uint8)).save(root / "labels" / f"{i}.png")
    data = (root / "images" / "3.png").read_bytes()
    (root / "images" / "3.png").write_bytes(data[: len(data) // 3])
    return root


def _folder_experiment(tmp_path: Path, root: Path, **entry) -> Path:
    base = {"name": "folder", "root": str(root), "split": "all", "classes": ["a", "b", "c"], **entry}
    exp = {"name": "faults", "work_dir": str(tmp_path / "runs"),
           "data": {"num_workers": 1, "source": {**base, "augment": {"crop": [32, 32]}}, "val": base},
           "model": {"arch": "segformer_b0", "tiny": True},
           "train": {"max_iters": 2, "batch_size": 2, "eval_interval": 2, "checkpoint_interval": 2},
           "eval": {"batch_size": 2}, "log": {"progress_bar": False}}
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_unreadable_image_in_a_loader_worker_is_one_line(tmp_path, folder):
    exp = _folder_experiment(tmp_path, folder)
    line = _one_line_error(_cli("run", str(exp)))
    assert "DataLoader worker" not in line and "cannot decode image file" in line and "3.png" in line


def test_data_check_lists_unreadable_files_and_carries_on(tmp_path, folder):
    (folder / "images" / "5.png").write_bytes(b"")
    result = _cli("data", "check", str(_folder_experiment(tmp_path, folder)))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "PROBLEM: 2 items cannot be read" in result.output
    assert "3.png: cannot decode image file" in result.output and "5.png: cannot decode image file" in result.output
    assert "class pixel frequency" in result.output  # the other items were read and summarised


def test_labels_that_decode_to_ignore_only_are_refused_before_training(tmp_path, folder):
    (folder / "images" / "3.png").unlink()
    (folder / "labels" / "3.png").unlink()
    exp = _folder_experiment(tmp_path, folder, label_map={10: 0, 20: 1, 30: 2})  # the files hold 0, 1, 2
    line = _one_line_error(_cli("run", str(exp)))
    assert "data.source" in line and "label_map {10: 0, 20: 1, 30: 2}" in line and "raw values" in line
    assert "[0, 1, 2]" in line
    assert not (tmp_path / "runs" / "faults" / "seed0" / "checkpoints").exists()


def test_one_line_unwraps_errors_reraised_by_dataloader_workers():
    wrapped = DasuiteError("Caught DasuiteError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\n    raise X\ndasuite.errors.DasuiteError: "
                           "cannot decode image file 'a.png': broken data stream")
    assert one_line(wrapped) == "cannot decode image file 'a.png': broken data stream"
    assert one_line(DasuiteError("plain")) == "plain"


# ---------------------------------------------------------------------------------------------- launchers
def test_a_launcher_with_more_processes_than_accelerate_joined_is_refused(monkeypatch):
    import dasuite.engine.accelerator as acc

    class OneProcess:
        num_processes = 1

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(acc, "Accelerator", OneProcess)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DasuiteError, match="launched as 2 processes .* joined 1: on a CPU set ACCELERATE_USE_CPU=1"):
        acc.make_accelerator()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert acc.make_accelerator().num_processes == 1


def test_eval_accepts_run_dir_and_run(tmp_path):
    cfg = tiny_toy_config(tmp_path, max_iters=2)
    train(cfg)
    run = str(RunDir.for_config(cfg).root)
    for option in ("--run-dir", "--run"):
        result = _cli("eval", option, run, "--split", "test", "--format", "json")
        assert result.exit_code == 0 and '"mIoU"' in result.output, result.output


def test_weights_load_refuses_unreadable_files_without_unpickling(weights, capsys):
    with pytest.raises(DasuiteError, match="pickled Python objects"):
        load_weights(weights["evil"])
    assert "UNPICKLED" not in capsys.readouterr().out
