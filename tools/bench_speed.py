"""Speed levers: step time of the engine with ``train.compile`` and ``train.channels_last`` against the eager,
contiguous default, side by side in one run.

Each variant runs ``Trainer.fit`` on the same pre-augmented batches as ``tools/bench_engine.py`` (default:
full-size SegFormer-B0, batch 2, 256x256), in its own process, the variants alternating, ``--repeats`` times. The
time per iteration is the median over ``--iters`` iterations after ``--warmup`` ones; the first iteration's time is
reported separately (with ``compile`` it contains the compilation). The best repeat of each variant is kept.

Prints one line per variant and as its last line ``<variant>_ratio=<variant/eager>`` for each (below 1 = faster).
``train.cudnn_benchmark`` has no effect on the CPU and is not measured here.

    OMP_NUM_THREADS=1 python tools/bench_speed.py                                   # eager vs compile
    OMP_NUM_THREADS=1 python tools/bench_speed.py --arch deeplabv3plus_r50 --variants eager channels_last
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_engine import _cached_batches, _config, _per_iter, side_result, step_arguments  # noqa: E402

VARIANTS = {
    "eager": [],
    "compile": ["train.compile=true"],
    "channels_last": ["train.channels_last=true"],
    "compile_channels_last": ["train.compile=true", "train.channels_last=true"],
}


def run_variant(args) -> dict:
    import torch

    from dasuite.engine.loop import Trainer

    trainer = Trainer(_config(args, ["log.progress_bar=false", *VARIANTS[args.side]]))
    device = trainer.accelerator.device
    batches = _cached_batches(args, device)
    counter = iter(range(10**9))
    trainer._next_batches = lambda: {"source": batches[next(counter) % len(batches)]}
    stamps = [time.perf_counter()]
    original_end = trainer.method.on_step_end

    def on_step_end(step):
        original_end(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.method.on_step_end = on_step_end
    trainer.fit()
    return {"first_s": stamps[1] - stamps[0], "step_s": _per_iter(stamps[1:], args.warmup),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, iters=10)
    parser.add_argument("--variants", nargs="+", default=["eager", "compile"], choices=sorted(VARIANTS))
    parser.add_argument("--work-dir", default="/tmp/dasuite_bench_runs")
    parser.add_argument("--side", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(run_variant(args)))
        return
    variants = ["eager", *[v for v in args.variants if v != "eager"]]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            results[variant].append(side_result(__file__, ["--side", variant], sys.argv[1:]))
            r = results[variant][-1]
            print(f"{variant:>22}: first iteration {r['first_s']:7.1f} s, {r['step_s'] * 1000:8.1f} ms/iter",
                  flush=True)
    step = {v: min(r["step_s"] for r in rs) for v, rs in results.items()}
    cold = {v: rs[0]["first_s"] for v, rs in results.items()}  # compile: inductor's caches were empty or older
    warm = {v: min(r["first_s"] for r in rs[1:]) if len(rs) > 1 else float("nan") for v, rs in results.items()}
    print(f"model {args.arch}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"{results['eager'][0]['threads']} threads, {args.iters} measured iterations x {args.repeats} repeats")
    for variant in variants:
        print(f"{variant:>22}: {step[variant] * 1000:8.1f} ms/iter; first iteration (compilation included) "
              f"{cold[variant]:7.1f} s in the first run, {warm[variant]:6.1f} s in later runs (compile: inductor's "
              f"on-disk cache)")
    print(" ".join(f"{v}_ratio={step[v] / step['eager']:.3f}" for v in variants if v != "eager"))


if __name__ == "__main__":
    main()
