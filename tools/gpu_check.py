"""A prepared GPU check: the figures a CPU cannot give, measured on one CUDA device within about 8 minutes.

Five measurements, each side in its own process (so each peak memory is its own), printed as ratios:

1. engine vs bare loop, SegFormer-B5 at 1024x1024, batch 2, bf16, eager: ``tools/bench_engine.py``'s two sides
   (``Trainer.fit`` on cached batches vs a hand-written loop), step time and peak ``max_memory_allocated``;
2. the same compiled (``train.compile`` vs ``torch.compile``); compilation time is the first iteration's, separate;
3. the DACS mean-teacher step (``experiments/toy/cutmix_pseudo.yaml``: EMA teacher, CutMix, strong augmentation)
   vs the source-only step, SegFormer-B5 at 512x512, batch 2 per role, bf16, on cached batches;
4. whole-image vs sliding-window evaluation (1024x1024 windows, stride 768) of a 2048x1024 image, SegFormer-B5,
   through ``tools/bench_eval.py``;
5. the peak ``max_memory_allocated`` of a MIC(HRDA) step (``experiments/toy/cutmix_pseudo.yaml`` + MIC's
   ``method.masking``; HRDA around a MiT-B5 with DAFormer's decoder, 1024x1024 crops, context 512, detail 512),
   batch 2 per role, bf16, gradient checkpointing off vs on, over two steps (the first allocates AdamW's state):
   ``tools/bench_uda.py``'s memory sides, whose CPU estimate it checks (docs/benchmarks.md).

A measurement that would start after ``--budget`` seconds is skipped and said so (the order puts the slow
compilation last). ``--smoke`` runs the same code on the CPU with tiny settings (tiny SegFormer-B0, 64x64, two
measured steps, the ``eager`` compile backend, a 256x128 image with 128 windows): a test that the check itself works,
whose numbers mean nothing. ``--json PATH`` also writes every figure to PATH.

    python tools/gpu_check.py --json $OUT/gpu_check.json      # on the GPU machine
    python tools/gpu_check.py --smoke                         # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(ROOT))

FULL = {"arch": "segformer_b5", "tiny": False, "size": 1024, "mt_size": 512, "batch": 2, "warmup": 3, "iters": 10,
        "backend": "inductor", "image": (2048, 1024), "crop": 1024, "repeat": 2, "timeout": 300, "mic_size": 1024}
SMOKE = {"arch": "segformer_b0", "tiny": True, "size": 64, "mt_size": 64, "batch": 2, "warmup": 1, "iters": 2,
         "backend": "eager", "image": (256, 128), "crop": 128, "repeat": 1, "timeout": 300, "mic_size": 64}


def _child(cmd: list[str], timeout: float) -> dict:
    """Run one measuring script in its own process; its last ``RESULT {json}`` line (or last JSON line) is the result.

    On the GPU a fresh interpreter (nothing of CUDA is shared); in ``--smoke`` a fork of this process, which has
    imported the libraries once (``_preload``), so the smoke test does not pay the imports eight times.
    """
    if FORK:
        stdout = _forked(cmd, timeout)
    else:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        stdout = proc.stdout
    last = stdout.strip().splitlines()[-1]
    return json.loads(last[7:] if last.startswith("RESULT ") else last)


FORK = False


def _preload() -> None:
    import dasuite.engine.loop  # noqa: F401
    import dasuite.models.segformer  # noqa: F401
    import tools.bench_engine  # noqa: F401
    import tools.bench_eval  # noqa: F401
    import tools.bench_uda  # noqa: F401


def _forked(cmd: list[str], timeout: float) -> str:
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_script, args=(cmd, sender))
    proc.start()
    sender.close()
    if not receiver.poll(timeout):
        proc.kill()
        raise RuntimeError(f"{' '.join(cmd[:4])} did not finish in {timeout:.0f} s")
    ok, text = receiver.recv()
    proc.join()
    if not ok:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {text}")
    return text


def _run_script(cmd: list[str], sender) -> None:
    """In the forked child: run the script as ``__main__`` with ``cmd`` as its argv, send back what it printed."""
    buffer, errors = io.StringIO(), io.StringIO()
    try:
        sys.argv = [str(c) for c in cmd]
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(errors):  # progress bars stay here
            runpy.run_path(sys.argv[0], run_name="__main__")
        sender.send((True, buffer.getvalue()))
    except BaseException:  # noqa: BLE001  (everything goes back to the parent, which raises it)
        sender.send((False, (errors.getvalue() + traceback.format_exc())[-2000:]))
    finally:
        sys.stdout.flush()
        os._exit(0)


def _step_stats(result: dict, warmup: int) -> tuple[float, float]:
    """Median seconds per iteration after ``warmup`` and the peak MiB of one side."""
    from tools.bench_engine import _per_iter

    return _per_iter(result["times"], warmup), result["peak_mib"]


def engine_vs_bare(s: dict, compiled: bool) -> dict:
    """Step time and peak memory of dasuite's loop vs a bare loop (tools/bench_engine.py sides)."""
    common = ["--arch", s["arch"], "--size", str(s["size"]), str(s["size"]), "--batch", str(s["batch"]),
              "--warmup", str(s["warmup"]), "--iters", str(s["iters"]), "--bf16", *(["--tiny"] if s["tiny"] else []),
              *(["--compile", "--compile-backend", s["backend"]] if compiled else [])]
    out = {}
    for side in ("bare", "engine"):
        start = time.perf_counter()
        r = _child([str(TOOLS / "bench_engine.py"), "--side", side, *common], s["timeout"])
        step, peak = _step_stats(r, s["warmup"])
        out[side] = {"step_s": step, "peak_mib": peak, "process_s": time.perf_counter() - start}
    out["time_ratio"] = out["engine"]["step_s"] / out["bare"]["step_s"]
    out["memory_ratio"] = out["engine"]["peak_mib"] / out["bare"]["peak_mib"]
    return out


def method_step(experiment: str, s: dict) -> dict:
    """One side of measurement 3, in this process: ``tools/bench_uda.py``'s ``Trainer.fit`` of ``experiment`` on
    cached batches, in bf16."""
    from tools.bench_uda import method_step as cached_step

    args = argparse.Namespace(arch=s["arch"], tiny=s["tiny"], size=(s["mt_size"], s["mt_size"]), batch=s["batch"],
                              warmup=s["warmup"], iters=s["iters"], work_dir="/tmp/dasuite_gpu_check")
    return cached_step(experiment, [f"model.arch={s['arch']}", f"model.tiny={str(s['tiny']).lower()}"], args,
                       precision="bf16")


def dacs_vs_source_only(s: dict, smoke: bool) -> dict:
    out = {}
    for name, experiment in (("source_only", "source_only.yaml"), ("dacs", "cutmix_pseudo.yaml")):
        r = _child([str(Path(__file__)), "--child", experiment, *(["--smoke"] if smoke else [])], s["timeout"])
        step, peak = _step_stats(r, s["warmup"])
        out[name] = {"step_s": step, "peak_mib": peak}
    out["time_ratio"] = out["dacs"]["step_s"] / out["source_only"]["step_s"]
    out["memory_ratio"] = out["dacs"]["peak_mib"] / out["source_only"]["peak_mib"]
    return out


def mic_hrda_memory(s: dict) -> dict:
    """Measurement 5: peak memory and step time of a bf16 MIC(HRDA) step, gradient checkpointing off and on."""
    out = {}
    for ckpt in ("off", "on"):
        r = _child([str(TOOLS / "bench_uda.py"), "--side", f"mem_bf16_{ckpt}", "--mem-arch", s["arch"],
                    "--validate-size", str(s["mic_size"]), "--batch", str(s["batch"]), "--mem-limit-gib", "0",
                    "--work-dir", "/tmp/dasuite_gpu_check", *(["--tiny"] if s["tiny"] else [])], s["timeout"])
        out[f"checkpointing_{ckpt}"] = {"step_s": r["times"][-1] - r["times"][-2], "peak_mib": r["peak_mib"],
                                        "first_s": r["first_s"]}
    off, on = out["checkpointing_off"], out["checkpointing_on"]
    out["peak_gib_off"], out["peak_gib_on"] = off["peak_mib"] / 1024, on["peak_mib"] / 1024  # a 24 GB card: 24 GiB
    out["time_ratio"] = on["step_s"] / off["step_s"]
    out["memory_ratio"] = on["peak_mib"] / off["peak_mib"]
    return out


def slide_vs_whole(s: dict) -> dict:
    out = {}
    for mode in ("whole", "slide"):
        out[mode] = _child([str(TOOLS / "bench_eval.py"), "--child", s["arch"], mode,
                            "--repeat", str(s["repeat"]), "--crop", str(s["crop"]), "--size", *map(str, s["image"]),
                            *(["--tiny"] if s["tiny"] else [])], s["timeout"])
    out["time_ratio"] = out["slide"]["seconds"] / out["whole"]["seconds"]
    out["peak_ratio"] = out["slide"]["peak_mib"] / out["whole"]["peak_mib"]
    out["added_memory_ratio"] = out["slide"]["added_mib"] / max(out["whole"]["added_mib"], 1e-9)
    return out


def _summary(name: str, r: dict) -> str:
    ratios = " ".join(f"{k}={v:.3f}" for k, v in r.items() if k.endswith("_ratio"))
    return f"{name}: {ratios}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny settings")
    parser.add_argument("--budget", type=float, default=450.0, help="start no measurement after this many seconds")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    if args.child:
        print("RESULT " + json.dumps(method_step(args.child, s)))
        return
    import torch

    global FORK
    if args.smoke:
        FORK = True
        _preload()
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on the GPU machine, or `python tools/gpu_check.py --smoke` "
                 "to check the script on this CPU")
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    print(f"device {device}, torch {torch.__version__}, model {s['arch']}{' (tiny)' if s['tiny'] else ''}", flush=True)
    plan = [
        ("engine_vs_bare_eager", f"engine vs bare loop, {s['size']}x{s['size']}, batch {s['batch']}, bf16, eager",
         lambda: engine_vs_bare(s, compiled=False)),
        ("slide_vs_whole", f"slide ({s['crop']} windows) vs whole, {s['image'][0]}x{s['image'][1]}",
         lambda: slide_vs_whole(s)),
        ("dacs_vs_source_only", f"DACS mean-teacher step vs source-only step, {s['mt_size']}x{s['mt_size']}, bf16",
         lambda: dacs_vs_source_only(s, args.smoke)),
        ("mic_hrda_memory", f"MIC(HRDA) {s['arch']} step, {s['mic_size']}x{s['mic_size']} crops, batch {s['batch']}, "
         f"bf16, grad checkpointing off vs on", lambda: mic_hrda_memory(s)),
        ("engine_vs_bare_compiled", f"engine vs bare loop, compiled ({s['backend']}), bf16",
         lambda: engine_vs_bare(s, compiled=True)),
    ]
    start, results = time.perf_counter(), {"device": device, "settings": {k: v for k, v in s.items()}}
    for key, title, measure in plan:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            print(f"{key}: not measured ({elapsed:.0f} s spent, budget {args.budget:.0f} s)", flush=True)
            results[key] = None
            continue
        results[key] = r = measure()
        details = "; ".join(f"{side} {v['step_s'] * 1000 if 'step_s' in v else v['seconds'] * 1000:.1f} ms, "
                            f"{v['peak_mib']:.0f} MiB" for side, v in r.items() if isinstance(v, dict))
        print(f"{title}: {details}", flush=True)
        print(_summary(key, r), flush=True)
    print(f"gpu_check done in {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        from dasuite.fileio import write_json

        write_json(results, args.json)


if __name__ == "__main__":
    main()
