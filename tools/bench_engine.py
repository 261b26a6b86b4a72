"""Engine overhead: one training iteration of dasuite's loop vs a bare PyTorch loop, side by side in one run.

Both sides train the same model (default: full-size SegFormer-B0) on the same pre-augmented batches with the same
optimizer and schedule; the engine side runs ``Trainer.fit`` (Accelerate wrappers, loss bookkeeping, logging,
progress bar) with its batch source replaced by the cached batches, so only the engine's own overhead differs.
Each side runs in its own subprocess (so peak memory is its own), alternating, ``--repeats`` times; the time per
iteration is the median over measured iterations, the best repeat is kept.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set size (VmHWM,
reset after warm-up through /proc/self/clear_refs) during the measured iterations.

``--bf16`` runs both sides in bf16 autocast, ``--compile`` compiles the model on both sides (the engine through
``train.compile``, the bare loop with ``torch.compile``). Prints both sides, the metric-update throughput against
torchmetrics, and as its last line ``time_ratio=<engine/bare> memory_ratio=<engine/bare>`` (targets: <= 1.05 and
<= 1.10).

``--user``: engine overhead as a user meets it, whole process against whole process. One side runs
``python -m dasuite run experiments/toy/source_only.yaml`` (tiny SegFormer-B0, batch 8, AdamW, the toy dataset,
one loader worker, augmentation off, no evaluation, ``--user-iters`` iterations); the other runs the plain PyTorch
script a user would write for the same job (``plain_user_loop``: the same toy dataset class in a ``DataLoader`` with
one worker, the same model, ``AdamW`` with the same poly schedule, ``F.cross_entropy(ignore_index=255)`` on upsampled
logits). Both with one intra-op thread (``OMP_NUM_THREADS=1``), alternating, ``--repeats`` times; wall time of the
whole process (start-up included), the best repeat kept, and the CPU time of each process with its loader worker.
``--same-malloc`` gives both sides the glibc heap settings the engine makes on the CPU (``keep_cpu_heap``), so the
ratio shows the engine's own overhead without that advantage. Last line ``user_time_ratio=<dasuite/plain>``
(target <= 1.05).
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


def _config(args, extra=()):
    from dasuite.config import load_config

    w, h = args.size
    return load_config(ROOT / "experiments" / "toy" / "source_only.yaml", [
        f"model.arch={args.arch}", f"model.tiny={str(args.tiny).lower()}", f"train.batch_size={args.batch}",
        f"train.max_iters={args.warmup + args.iters}", "train.eval_interval=100000",
        "train.checkpoint_interval=100000", "train.log_interval=20", f"data.source.size=[{w},{h}]",
        "data.source.augment.crop=null", "data.num_workers=0", "data.val=null", "data.test=null", f"work_dir={args.work_dir}", "log.progress_bar=true",
        "schedule.warmup_iters=10", f"tag=bench{time.time_ns()}", *extra,
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

    trainer = Trainer(_config(args, _lever_overrides(args)))
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
    forward = torch.compile(model, backend=args.compile_backend) if getattr(args, "compile", False) else model
    precision = torch.bfloat16 if getattr(args, "bf16", False) else None
    stamps = []
    for step in range(args.warmup + args.iters):
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            loss = seg_loss(forward(batch["image"]), batch["label"])
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


def _lever_overrides(args) -> list[str]:
    """The engine side's config for ``--bf16`` / ``--compile`` (the bare side applies them by hand)."""
    extra = ["train.mixed_precision=bf16"] if getattr(args, "bf16", False) else []
    if getattr(args, "compile", False):
        extra += ["train.compile=true", f"train.compile_backend={args.compile_backend}"]
    return extra


USER_LR, USER_WD, USER_WARMUP, USER_BATCH = 0.002, 0.01, 50, 8


def _user_overrides(args) -> list[str]:
    """The toy source-only experiment as the user comparison runs it (see the module docstring); a fresh tag."""
    return [f"train.max_iters={args.user_iters}", "data.num_workers=1", "data.source.augment.enabled=false",
            "data.val=null", "data.test=null", f"work_dir={args.work_dir}", f"tag=user{time.time_ns()}",
            *args.override]


def plain_user_loop(iters: int) -> None:
    """What a user writes without dasuite for the same job: toy scenes, tiny SegFormer-B0, AdamW, poly schedule."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from dasuite.data.toy import ToyConfig, ToyDataset
    from dasuite.models import create_model

    torch.manual_seed(0)
    dataset = ToyDataset(ToyConfig(domain="synthetic", split="train"))
    loader = DataLoader(dataset, batch_size=USER_BATCH, shuffle=True, num_workers=1, drop_last=True,
                        persistent_workers=True, collate_fn=lambda items: (
                            torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])))
    model = create_model("segformer_b0", dataset.num_classes, tiny=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=USER_LR, weight_decay=USER_WD)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: min(1.0, (it + 1) / USER_WARMUP)
                                                 * (1 - it / iters))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    it = 0
    while it < iters:
        for images, labels in loader:
            images = (images.float() / 255 - mean) / std
            logits = F.interpolate(model(images), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, labels, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            it += 1
            if it % 20 == 0:
                print(f"iteration {it} loss {loss.item():.4f}")
            if it == iters:
                break


def run_user(args) -> None:
    """Both whole processes of ``--user``, alternating; prints the wall times and ``user_time_ratio``."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if args.same_malloc:  # both sides with the engine's heap settings (the engine then leaves malloc alone)
        from dasuite.engine.loop import CPU_HEAP_KEEP, CPU_MMAP_THRESHOLD

        env.update(MALLOC_TRIM_THRESHOLD_=str(CPU_HEAP_KEEP), MALLOC_MMAP_THRESHOLD_=str(CPU_MMAP_THRESHOLD))
    walls: dict[str, list[float]] = {"plain": [], "dasuite": []}
    cpus: dict[str, list[float]] = {"plain": [], "dasuite": []}
    for _ in range(args.repeats):
        for side in ("plain", "dasuite"):
            cmd = ([sys.executable, __file__, "--side", "plain", "--user-iters", str(args.user_iters)]
                   if side == "plain" else [sys.executable, "-m", "dasuite", "run",
                                            str(ROOT / "experiments/toy/source_only.yaml"), *_user_overrides(args)])
            before, start = _children_cpu(), time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
            walls[side].append(time.perf_counter() - start)
            cpus[side].append(_children_cpu() - before)
            if proc.returncode:
                sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
            print(f"{side:>8}: {walls[side][-1]:6.2f} s wall, {cpus[side][-1]:6.2f} s CPU", flush=True)
    best = {side: min(w) for side, w in walls.items()}
    cpu = {side: min(c) for side, c in cpus.items()}
    print(f"toy source-only, tiny SegFormer-B0, batch {USER_BATCH}, {args.user_iters} iterations, 1 thread, "
          f"1 loader worker, augmentation off{', both sides with the same malloc settings' if args.same_malloc else ''}"
          f"; best of {args.repeats} whole-process runs:")
    for side in ("plain", "dasuite"):
        print(f"{side:>8}: {best[side]:6.2f} s wall (all: {', '.join(f'{w:.2f}' for w in walls[side])}), "
              f"{cpu[side]:6.2f} s CPU (main process and loader worker)")
    print(f"user CPU-time ratio {cpu['dasuite'] / cpu['plain']:.3f}")
    print(f"user_time_ratio={best['dasuite'] / best['plain']:.3f}")


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and their reaped children) so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def side_result(script: str, extra: list[str], argv: list[str], **run_kw) -> dict:
    """Run ``script`` with ``extra`` + ``argv`` in a fresh interpreter (so its peak memory is its own) and return
    the JSON of its last ``RESULT`` line; exit with its stderr when it fails."""
    proc = subprocess.run([sys.executable, script, *extra, *argv], capture_output=True, text=True, check=False,
                          **run_kw)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{' '.join(extra)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def _per_iter(times: list[float], warmup: int) -> float:
    deltas = [b - a for a, b in zip(times[warmup - 1:], times[warmup:])]
    return statistics.median(deltas)


def step_arguments(parser: argparse.ArgumentParser, *, arch: str = "segformer_b0", size: int = 256,
                   warmup: int = 3, iters: int = 12, tiny: bool = True) -> None:
    """The options every step benchmark takes: the model, input size, batch, warm-up / measured steps, repeats."""
    parser.add_argument("--arch", default=arch)
    if tiny:
        parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, nargs=2, default=[size, size], metavar=("W", "H"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--repeats", type=int, default=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser)
    parser.add_argument("--work-dir", default="/tmp/dasuite_bench_runs")
    parser.add_argument("--bf16", action="store_true", help="both sides in bf16 autocast (train.mixed_precision)")
    parser.add_argument("--compile", action="store_true", help="both sides torch.compile the model (train.compile)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--user", action="store_true",
                        help="whole process: `dasuite run` of the toy experiment vs a plain PyTorch script")
    parser.add_argument("--user-iters", type=int, default=300)
    parser.add_argument("--same-malloc", action="store_true",
                        help="--user: give the plain side the engine's glibc heap settings too (MALLOC_* variables)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="--user: an extra override of the dasuite side (repeatable)")
    parser.add_argument("--side", choices=["engine", "bare", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "plain":
        plain_user_loop(args.user_iters)
        return
    if args.user:
        run_user(args)
        return
    if args.side:
        out = run_engine(args) if args.side == "engine" else run_bare(args)
        print("RESULT " + json.dumps(out))
        return
    results: dict[str, list[dict]] = {"engine": [], "bare": []}
    for _ in range(args.repeats):
        for side in ("bare", "engine"):
            results[side].append(side_result(__file__, ["--side", side], sys.argv[1:]))
    sec = {s: min(_per_iter(r["times"], args.warmup) for r in rs) for s, rs in results.items()}
    mem = {s: min(r["peak_mib"] for r in rs) for s, rs in results.items()}
    print(f"model {args.arch}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"{args.iters} measured iterations x {args.repeats} repeats{', bf16' if args.bf16 else ''}"
          f"{f', compiled ({args.compile_backend})' if args.compile else ''}")
    for side in ("bare", "engine"):
        print(f"{side:>6}: {sec[side] * 1000:8.1f} ms/iter   peak memory {mem[side]:8.1f} MiB")
    from tools.bench_metrics import bench_metric_update

    metric_ratio = bench_metric_update()
    print(f"metric update throughput ours/torchmetrics: {metric_ratio:.2f}")
    print(f"time_ratio={sec['engine'] / sec['bare']:.3f} memory_ratio={mem['engine'] / mem['bare']:.3f}")


if __name__ == "__main__":
    main()
