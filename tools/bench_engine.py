"""Engine overhead: one training iteration of dasuite's loop vs a bare PyTorch loop, side by side in one run.

Both sides train the same model (default: full-size SegFormer-B0) on the same pre-augmented batches with the same
optimizer and schedule; the engine side runs ``Trainer.fit`` (Accelerate wrappers, loss bookkeeping, logging,
progress bar) with its batch source replaced by the cached batches, so only the engine's own overhead differs.
Each side runs in its own subprocess (so peak memory is its own), alternating, ``--repeats`` times; the time per
iteration is the median over measured iterations, the best repeat is kept.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set size (VmHWM,
reset after warm-up through /proc/self/clear_refs) during the measured iterations.

Prints both sides, the metric-update throughput against torchmetrics, and as its last line
``time_ratio=<engine/bare> memory_ratio=<engine/bare>`` (targets: <= 1.05 and <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _config(args):
    from dasuite.config import load_config

    w, h = args.size
    return load_config(ROOT / "experiments" / "toy" / "source_only.yaml", [
        f"model.arch={args.arch}", f"model.tiny={str(args.tiny).lower()}", f"train.batch_size={args.batch}",
        f"train.max_iters={args.warmup + args.iters}", "train.eval_interval=100000",
        "train.checkpoint_interval=100000", "train.log_interval=20", f"data.source.size=[{w},{h}]",
        "data.source.augment.crop=null", "data.num_workers=0", f"work_dir={args.work_dir}", "log.progress_bar=true",
        "schedule.warmup_iters=10", f"tag=bench{time.time_ns()}",
    ])


def _cached_batches(args, device):
    """``args.warmup + args.iters`` augmented batches, identical for both sides (seeded)."""
    import torch

    from dasuite.data import build_dataset
    from dasuite.data.augment import DeviceAugment

    cfg = _config(args)
    torch.manual_seed(0)
    ds = build_dataset(cfg.data.source, None)
    aug = DeviceAugment(cfg.data.source.augment)
    batches = []
    for i in range(4):
        items = [ds[(i * args.batch + j) % len(ds)] for j in range(args.batch)]
        image = torch.stack([it["image"] for it in items]).to(device)
        label = torch.stack([it["label"] for it in items]).to(device)
        image, label = aug(image, label)
        batches.append({"image": image, "label": label, "name": [it["name"] for it in items]})
    return batches


def run_engine(args) -> dict:
    import torch

    from dasuite.engine.loop import Trainer

    trainer = Trainer(_config(args))
    device = trainer.accelerator.device
    batches = _cached_batches(args, device)
    stamps: list[float] = []
    counter = iter(range(10**9))
    trainer._next_batches = lambda: {"source": batches[next(counter) % len(batches)]}
    original_end = trainer.method.on_step_end
    peak = {}

    def on_step_end(step):
        original_end(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if step + 1 == args.warmup:
            _reset_peak(device)

    trainer.method.on_step_end = on_step_end
    trainer.fit()
    peak["mib"] = _peak_mib(device)
    return {"times": stamps, "peak_mib": peak["mib"]}


def run_bare(args) -> dict:
    import torch

    from dasuite.engine.optim import build_optimizer
    from dasuite.schedule import build_scheduler
    from dasuite.losses import seg_loss
    from dasuite.models import create_model

    cfg = _config(args)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(cfg.model.arch, 19, tiny=cfg.model.tiny).to(device).train()
    opt = build_optimizer(model, cfg.optim, model.head_prefixes)
    sched = build_scheduler(opt, cfg.schedule, cfg.train.max_iters)
    batches = _cached_batches(args, device)
    stamps = []
    for step in range(args.warmup + args.iters):
        batch = batches[step % len(batches)]
        loss = seg_loss(model(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if step + 1 == args.warmup:
            _reset_peak(device)
    return {"times": stamps, "peak_mib": _peak_mib(device)}


def _per_iter(times: list[float], warmup: int) -> float:
    deltas = [b - a for a, b in zip(times[warmup - 1:], times[warmup:])]
    return statistics.median(deltas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="segformer_b0")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", default="/tmp/dasuite_bench_runs")
    parser.add_argument("--side", choices=["engine", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        out = run_engine(args) if args.side == "engine" else run_bare(args)
        print("RESULT " + json.dumps(out))
        return
    results: dict[str, list[dict]] = {"engine": [], "bare": []}
    for _ in range(args.repeats):
        for side in ("bare", "engine"):
            cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
            results[side].append(json.loads(line[-1][7:]))
    sec = {s: min(_per_iter(r["times"], args.warmup) for r in rs) for s, rs in results.items()}
    mem = {s: min(r["peak_mib"] for r in rs) for s, rs in results.items()}
    print(f"model {args.arch}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"{args.iters} measured iterations x {args.repeats} repeats")
    for side in ("bare", "engine"):
        print(f"{side:>6}: {sec[side] * 1000:8.1f} ms/iter   peak memory {mem[side]:8.1f} MiB")
    from tools.bench_metrics import bench_metric_update

    metric_ratio = bench_metric_update()
    print(f"metric update throughput ours/torchmetrics: {metric_ratio:.2f}")
    print(f"time_ratio={sec['engine'] / sec['bare']:.3f} memory_ratio={mem['engine'] / mem['bare']:.3f}")


if __name__ == "__main__":
    main()
