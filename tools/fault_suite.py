"""The fault suite: real processes, real kills, a real full filesystem. Each case starts ``dasuite`` as a user would,
injects one fault at a chosen instant and checks what the user sees (one line, no traceback, the right exit code)
and what is kept (checkpoints, resumability, no orphan processes, no temp files).

    python tools/fault_suite.py                 # every case; prints the table of docs/reliability.md
    python tools/fault_suite.py --case sigkill  # the cases whose name contains "sigkill"

Exit status 1 when a case fails. ``tests/test_fault_suite.py`` runs it (``pytest -m slow``). The full-disk case
mounts a small tmpfs and is reported as skipped where mounting is not permitted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "experiments" / "toy" / "source_only.yaml")
TINY = ["train.batch_size=2", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
        "schedule.warmup_iters=0", "data.num_workers=0", "data.source.size=[48,32]", "data.source.num_images=8",
        "data.source.augment.crop=[32,32]", "data.val.size=[48,32]", "data.val.num_images=2",
        "data.test.size=[48,32]", "data.test.num_images=2", "log.progress_bar=false", "eval.batch_size=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@dataclass
class Outcome:
    """One row of the table: the case, what the user saw, what was kept, and whether it is as it should be."""

    case: str
    sees: str
    kept: str
    ok: Optional[bool]  # None: skipped


# ------------------------------------------------------------------------------------------------- helpers
def dasuite(*args: str, env: Optional[dict] = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dasuite", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or ENV, timeout=timeout)


def driver(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a child whose ``code`` (Python) first installs a fault (a patched function)."""
    program = textwrap.dedent(code) + "\nfrom dasuite.cli import main\nmain(sys.argv[1:], prog_name='dasuite')\n"
    return subprocess.run([sys.executable, "-c", "import os, sys, signal\n" + program, *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=600)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith(("Error:", "Aborted"))]
    return lines[-1] if lines else (proc.stderr.strip().splitlines() or ["(nothing)"])[-1]


def clean(proc: subprocess.CompletedProcess, code: int) -> bool:
    """Exit ``code``, exactly one Error/Aborted line, no traceback."""
    text = proc.stdout + proc.stderr
    said = [l for l in proc.stderr.splitlines() if l.startswith(("Error:", "Aborted"))]
    return proc.returncode == code and len(said) == 1 and "Traceback" not in text


def summary(work: Path, tag: str = "seed0") -> dict:
    return json.loads((work / "toy_source_only" / tag / "summary.json").read_text())


def metrics(s: dict) -> tuple:
    return tuple((k, s[k]["iteration"], s[k]["mIoU"], s[k]["mean_loss"]) for k in ("final", "best", "test"))


def processes_in_group(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# ------------------------------------------------------------------------------------------------- cases
def bad_yaml(tmp: Path) -> Outcome:
    path = tmp / "bad.yaml"
    path.write_text("name: x\ntrain: {max_iters: 3\n")
    proc = dasuite("run", str(path))
    return Outcome("YAML syntax error", error_line(proc), "nothing started", clean(proc, 2) and "not valid YAML" in
                   proc.stderr)


def unknown_key(tmp: Path) -> Outcome:
    proc = dasuite("run", TOY, "train.max_iter=3")
    return Outcome("unknown key (typo)", error_line(proc) + " " + proc.stderr.splitlines()[-1].strip(),
                   "nothing started", clean(proc, 2) and "did you mean 'train.max_iters'" in proc.stderr)


def quoted_number(tmp: Path) -> Outcome:
    proc = dasuite("run", TOY, 'train.batch_size="8"')
    return Outcome('quoted number (`batch_size: "8"`)', proc.stderr.strip().splitlines()[-1].strip(),
                   "nothing started", clean(proc, 2) and "expected an integer" in proc.stderr)


def malicious_pickle(tmp: Path) -> Outcome:
    evil = tmp / "evil.pt"
    marker = tmp / "EXECUTED"
    evil.write_bytes(subprocess.run(
        [sys.executable, "-c", f"import pickle,os,sys\nclass E:\n def __reduce__(self): return (os.system, "
                               f"('touch {marker}',))\nsys.stdout.buffer.write(pickle.dumps({{'model': E()}}))"],
        capture_output=True).stdout)
    proc = dasuite("eval", "--config", TOY, "--checkpoint", str(evil), *TINY)
    return Outcome("malicious pickle as a checkpoint", error_line(proc), "no code ran (weights_only)",
                   clean(proc, 1) and not marker.exists() and "pickled Python objects" in proc.stderr)


def broken_weights(tmp: Path) -> Outcome:
    code = ("from dasuite.models import create_model; from dasuite.fileio import save_weights; import sys; "
            "save_weights(create_model('segformer_b0', 19).state_dict(), sys.argv[1])")
    good = tmp / "wide.safetensors"
    subprocess.run([sys.executable, "-c", code, str(good)], check=True, env=ENV, cwd=ROOT)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"", "pickle renamed": None}
    rows, ok = [], True
    for kind, content in cases.items():
        path = tmp / f"{kind.replace(' ', '_')}.safetensors"
        if content is None:
            subprocess.run([sys.executable, "-c", "import torch,sys; torch.save({'model': {}}, sys.argv[1])",
                            str(path)], check=True)
        else:
            path.write_bytes(content)
        proc = dasuite("eval", "--config", TOY, "--checkpoint", str(path), *TINY)
        ok &= clean(proc, 1) and str(path) in proc.stderr
        rows.append(error_line(proc))
    proc = dasuite("run", TOY, "--init-from", str(good), f"work_dir={tmp / 'w'}", *TINY)
    ok &= clean(proc, 1) and "weight shapes do not match" in proc.stderr
    rows.append(error_line(proc))
    return Outcome("truncated / empty / pickle-renamed .safetensors; full-width weights into a tiny model",
                   " / ".join(r[:110] + ("..." if len(r) > 110 else "") for r in rows), "nothing written", ok)


def nan_loss(tmp: Path) -> Outcome:
    work = tmp / "nan"
    proc = dasuite("run", TOY, f"work_dir={work}", "train.max_iters=40", "optim.lr=1e12", *TINY,
                   "train.checkpoint_interval=1")
    return Outcome("NaN / inf loss", error_line(proc), "the last good checkpoint (named in the message)",
                   clean(proc, 1) and "non-finite loss" in proc.stderr and "Last good checkpoint" in proc.stderr)


def _uninterrupted(tmp: Path) -> tuple:
    work = tmp / "full"
    proc = dasuite("run", TOY, f"work_dir={work}", "train.max_iters=6", *TINY)
    assert proc.returncode == 0, proc.stderr
    return metrics(summary(work))


def signal_after_checkpoint(sig: str, iteration: int = 4) -> str:
    """Driver code: send ``signal.<sig>`` to the process right after ``last.pt`` of ``iteration`` is in place."""
    return f"""
import dasuite.engine.loop as loop
real = loop.save_torch
def save(obj, path):
    real(obj, path)
    if obj.get("iteration") == {iteration}:
        os.kill(os.getpid(), signal.{sig})
loop.save_torch = save
"""


KILL_AFTER_REPLACE = signal_after_checkpoint("SIGKILL")

KILL_DURING_WRITE = """
import dasuite.fileio as fileio
real = fileio.os.replace
def replace(src, dst):
    if str(dst).endswith("last.pt") and os.environ.get("DASUITE_FAULT_SEEN") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    if str(dst).endswith("last.pt"):
        os.environ["DASUITE_FAULT_SEEN"] = "1"
    real(src, dst)
fileio.os.replace = replace
"""


def sigkill_at(name: str, code: str, tmp: Path, reference: tuple) -> Outcome:
    work = tmp / name.replace(" ", "_")
    args = ("run", TOY, f"work_dir={work}", "train.max_iters=6", *TINY)
    killed = driver(code, *args)
    temps = sorted(p.name for p in (work / "toy_source_only" / "seed0" / "checkpoints").glob(".*.tmp"))
    resumed = dasuite(*args, "--resume")
    same = resumed.returncode == 0 and metrics(summary(work)) == reference
    left = sorted(p.name for p in (work / "toy_source_only" / "seed0" / "checkpoints").glob(".*.tmp"))
    return Outcome(f"SIGKILL {name}", f"killed (exit {killed.returncode}); `--resume` exits {resumed.returncode}",
                   f"resumed metrics {'equal' if same else 'DIFFER from'} the uninterrupted run's; temp files "
                   f"{temps or 'none'} after the kill, {left or 'none'} after the resume",
                   killed.returncode == -signal.SIGKILL and same and not left)


def sigint_training(tmp: Path, reference: tuple) -> Outcome:
    work = tmp / "sigint"
    args = ["run", TOY, f"work_dir={work}", "train.max_iters=6", *TINY]
    proc = driver(signal_after_checkpoint("SIGINT"), *args)
    resumed = dasuite(*args, "--resume")
    same = resumed.returncode == 0 and metrics(summary(work)) == reference
    return Outcome("Ctrl-C (SIGINT) during training", error_line(proc),
                   f"last.pt of iteration 4; `--resume` {'equals' if same else 'DIFFERS from'} the uninterrupted run",
                   clean(proc, 130) and same)


def _cyclegan_run(tmp: Path) -> Path:
    work = tmp / "cyclegan"
    exp = str(ROOT / "experiments" / "toy" / "cyclegan.yaml")
    proc = dasuite("run", exp, f"work_dir={work}", "train.max_iters=2", "train.batch_size=1",
                   "train.checkpoint_interval=2", "data.num_workers=0", "log.progress_bar=false",
                   "method.ngf=4", "method.n_blocks=1", "method.ndf=4", "method.vis_interval=0",
                   "data.source.num_images=4", "data.target.num_images=4")
    assert proc.returncode == 0, proc.stderr
    return next((work / "toy_cyclegan").iterdir())


def _start_translate(run: Path, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "dasuite", "translate", "--run-dir", str(run), "--out", str(out), "--writers", "2",
            "--num-workers", "2", "--batch-size", "1", "num_images=400", "size=[320,240]"]
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_files(out: Path, count: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(list(out.rglob("*.png"))) < count:
        time.sleep(0.2)


def sigkill_translate(tmp: Path, run: Path) -> Outcome:
    out = tmp / "translated_kill"
    proc = _start_translate(run, out)
    _wait_for_files(out, 4)
    group = proc.pid
    before = len(processes_in_group(group))
    proc.kill()
    proc.wait()
    time.sleep(3)
    left = processes_in_group(group)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return Outcome("SIGKILL of `dasuite translate` (2 decoders, 2 writers)",
                   f"killed; {before} processes in its group before, {len(left)} alive 3 s after",
                   "finished files (the next run resumes from its manifest)", not left and before > 1)


def sigint_translate(tmp: Path, run: Path) -> Outcome:
    out = tmp / "translated_int"
    proc = _start_translate(run, out)
    _wait_for_files(out, 4)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    stdout, stderr = proc.communicate(timeout=120)
    said = [l for l in stderr.splitlines() if l.strip() and not l.startswith(("translate:", "\r"))]
    time.sleep(1)
    left = processes_in_group(proc.pid)
    ok = (proc.returncode == 130 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
          and sum(l.startswith("Aborted") for l in stderr.splitlines()) == 1 and not left)
    return Outcome("Ctrl-C (SIGINT to the process group) of `dasuite translate`",
                   next((l for l in said if l.startswith("Aborted")), said[-1] if said else "(nothing)"),
                   f"finished files and their manifest; {len(left)} processes left", ok)


def full_disk(tmp: Path) -> Outcome:
    mount = tmp / "small_disk"
    mount.mkdir()
    probe = tmp / "probe"
    dasuite("run", TOY, f"work_dir={probe}", "train.max_iters=2", *TINY)
    size = (probe / "toy_source_only" / "seed0" / "checkpoints" / "last.pt").stat().st_size
    total = sum(p.stat().st_size for p in (probe / "toy_source_only").rglob("*") if p.is_file())
    budget = total + size // 2  # room for one checkpoint and its run files, not for a second copy beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={budget}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        return Outcome("full disk during a checkpoint write", "(not run: mounting a small tmpfs is not permitted)",
                       "-", None)
    try:
        proc = dasuite("run", TOY, f"work_dir={mount}", "train.max_iters=6", *TINY)
        run = mount / "toy_source_only" / "seed0"
        temps = list(run.rglob(".*.tmp"))
        last = run / "checkpoints" / "last.pt"
        ok = (clean(proc, 1) and "no space left on device while writing" in proc.stderr and
              "last good checkpoint" in proc.stderr and not temps and last.is_file())
        return Outcome("full disk during a checkpoint write", error_line(proc),
                       f"the previous last.pt intact; {len(temps)} temp files", ok)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _folder(tmp: Path, label_map: Optional[dict] = None, broken: int = 0) -> Path:
    code = textwrap.dedent(f"""
        import numpy as np, sys, yaml
        from pathlib import Path
        from PIL import Image
        root = Path(sys.argv[1]); rng = np.random.default_rng(0)
        for sub in ("images", "labels"): (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "images" / f"{{i}}.png")
            Image.fromarray(rng.integers(0, 3, (32, 48), dtype=np.uint8)).save(root / "labels" / f"{{i}}.png")
        for i in range({broken}):
            data = (root / "images" / f"{{i + 2}}.png").read_bytes()
            (root / "images" / f"{{i + 2}}.png").write_bytes(data[: len(data) // 3])
        entry = {{"name": "folder", "root": str(root), "split": "all", "classes": ["a", "b", "c"]}}
        if {label_map!r} is not None: entry["label_map"] = {label_map!r}
        exp = {{"name": "faults", "work_dir": str(root.parent / "runs"), "model": {{"arch": "segformer_b0",
               "tiny": True}}, "data": {{"num_workers": 1, "source": {{**entry, "augment": {{"crop": [32, 32]}}}},
               "val": entry}}, "train": {{"max_iters": 2, "batch_size": 2, "eval_interval": 2}},
               "log": {{"progress_bar": False}}}}
        (root.parent / "exp.yaml").write_text(yaml.safe_dump(exp))
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp / "data")], check=True)
    return tmp / "exp.yaml"


def worker_error(tmp: Path) -> Outcome:
    exp = _folder(tmp, broken=1)
    proc = dasuite("run", str(exp))
    return Outcome("truncated image read in a DataLoader worker (training)", error_line(proc),
                   "nothing after the last checkpoint",
                   clean(proc, 1) and "DataLoader worker" not in proc.stderr and "2.png" in proc.stderr)


def data_check(tmp: Path) -> Outcome:
    exp = _folder(tmp, broken=2)
    proc = dasuite("data", "check", str(exp))
    listed = [l.strip() for l in proc.stdout.splitlines() if ".png: cannot decode" in l]
    return Outcome("`dasuite data check` with 2 unreadable images", f"{len(listed)} listed: {listed[0][:90]}...",
                   "the check read every other item", proc.returncode == 1 and len(listed) == 4)  # source + val


def ignored_labels(tmp: Path) -> Outcome:
    exp = _folder(tmp, label_map={10: 0, 20: 1, 30: 2})
    proc = dasuite("run", str(exp))
    return Outcome("a label_map that matches none of the files' values", error_line(proc), "nothing started",
                   clean(proc, 1) and "label_map" in proc.stderr and "raw values" in proc.stderr)


def torchrun_cpu(tmp: Path) -> Outcome:
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--nproc_per_node", "2", "-m", "dasuite", "run", TOY, f"work_dir={tmp / 'tr'}", *TINY]
    env = {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("Error:")]
    return Outcome("`torchrun --nproc_per_node 2` on a CPU without ACCELERATE_USE_CPU", errors[0] if errors else
                   "(nothing)", "nothing trained", proc.returncode != 0 and len(errors) == 1 and
                   "ACCELERATE_USE_CPU" in errors[0] and not (tmp / "tr" / "toy_source_only").exists())


def eval_two_processes(tmp: Path) -> Outcome:
    work = tmp / "ev"
    assert dasuite("run", TOY, f"work_dir={work}", "train.max_iters=2", *TINY).returncode == 0
    run = str(work / "toy_source_only" / "seed0")
    one = dasuite("eval", "--run-dir", run, "--split", "test", "--format", "json")
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "dasuite", "eval", "--run-dir", run,
                          "--split", "test", "--format", "json"], capture_output=True, text=True, cwd=ROOT,
                         env={**ENV, "ACCELERATE_USE_CPU": "1"}, timeout=600)
    a = json.loads(one.stdout[one.stdout.index("{"):])
    b = json.loads(two.stdout[two.stdout.index("{"):]) if "{" in two.stdout else {}
    same = b.get("iou") == a["iou"] and b.get("num_images") == a["num_images"]
    return Outcome("`torchrun --nproc_per_node 2 -m dasuite eval --run-dir RUN` (ACCELERATE_USE_CPU=1)",
                   f"exit {two.returncode}; per-class IoU {'equal to' if same else 'DIFFERENT from'} one process",
                   "-", two.returncode == 0 and same)


def run_all(selected: Callable[[str], bool]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="dasuite_faults_") as name:
        tmp = Path(name)
        simple = [bad_yaml, unknown_key, quoted_number, malicious_pickle, broken_weights, nan_loss, worker_error,
                  data_check, ignored_labels, full_disk, torchrun_cpu, eval_two_processes]
        for case in simple:
            if selected(case.__name__):
                sub = tmp / case.__name__
                sub.mkdir()
                outcomes.append(case(sub))
                print(f"{'ok  ' if outcomes[-1].ok else 'skip' if outcomes[-1].ok is None else 'FAIL'} "
                      f"{outcomes[-1].case}", file=sys.stderr, flush=True)
        if any(selected(n) for n in ("sigkill_after_replace", "sigkill_during_write", "sigint_training")):
            reference = _uninterrupted(tmp)
            for name, code in (("after last.pt is replaced", KILL_AFTER_REPLACE),
                               ("during the write of last.pt", KILL_DURING_WRITE)):
                if selected("sigkill_" + ("after_replace" if "after" in name else "during_write")):
                    outcomes.append(sigkill_at(name, code, tmp, reference))
            if selected("sigint_training"):
                outcomes.append(sigint_training(tmp, reference))
        if any(selected(n) for n in ("sigkill_translate", "sigint_translate")):
            run = _cyclegan_run(tmp)
            if selected("sigkill_translate"):
                outcomes.append(sigkill_translate(tmp, run))
            if selected("sigint_translate"):
                outcomes.append(sigint_translate(tmp, run))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = ["| case | what the user sees | what is kept | result |", "|---|---|---|---|"]
    for o in outcomes:
        result = "skipped" if o.ok is None else "as expected" if o.ok else "FAILED"
        rows.append(f"| {o.case} | {o.sees.replace('|', '/')} | {o.kept} | {result} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="", help="Run only the cases whose name contains this text.")
    args = parser.parse_args()
    outcomes = run_all(lambda name: args.case in name)
    print(table(outcomes))
    sys.exit(1 if any(o.ok is False for o in outcomes) else 0)


if __name__ == "__main__":
    main()
