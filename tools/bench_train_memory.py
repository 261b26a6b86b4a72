"""Training-time memory: peak memory and step time of one training step with and without ``train.grad_checkpointing``.

Default: full-size SegFormer-B5 (``segformer_b5``, random initialisation, 19 classes) at 512x512, batch 2, AdamW,
``seg_loss`` on random labels; the checkpointing side turns it on with ``model.set_grad_checkpointing(True)``, the
call the engine makes for ``train.grad_checkpointing: true``. Each side runs in its own process (so its peak is its
own), alternating, ``--repeats`` times; per process ``--warmup`` steps (the first allocates AdamW's state), then the
peak is reset and ``--iters`` steps are measured. Peak memory: CUDA ``max_memory_allocated`` on a GPU, the
process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) on the CPU; the RSS includes the
Python process, the libraries, weights, gradients and optimizer state as well as the activations. The best repeat
of each side is kept (lowest peak, lowest median step time).

Prints both sides and as its last line ``memory_ratio=<on/off> time_ratio=<on/off>`` (targets: memory <= 0.65,
i.e. at least 35% lower, with time <= 1.4).

    OMP_NUM_THREADS=1 python tools/bench_train_memory.py                      # SegFormer-B5, 512x512, batch 2
    python tools/bench_train_memory.py --arch deeplabv3plus_r101 --size 512 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_engine import _peak_mib, _reset_peak, side_result, step_arguments  # noqa: E402


def run_side(args, checkpointing: bool) -> dict:
    import torch

    from dasuite.losses import seg_loss
    from dasuite.models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(args.arch, 19).to(device).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    w, h = args.size
    images = torch.randn(args.batch, 3, h, w, device=device)
    labels = torch.randint(0, 19, (args.batch, h, w), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    times = []
    for step in range(args.warmup + args.iters):
        start = time.perf_counter()
        with autocast:
            loss = seg_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if step + 1 == args.warmup:
            _reset_peak(device)
    return {"step_s": statistics.median(times[args.warmup:]), "peak_mib": _peak_mib(device),
            "threads": torch.get_num_threads(), "device": device.type}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, arch="segformer_b5", size=512, warmup=1, iters=2, tiny=False)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (what train.mixed_precision=bf16 does)")
    parser.add_argument("--side", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(run_side(args, args.side == "on")))
        return
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for side in ("off", "on"):
            results[side].append(side_result(__file__, ["--side", side], sys.argv[1:]))
            print(f"grad_checkpointing {side:>3}: {results[side][-1]['step_s']:7.2f} s/step, peak "
                  f"{results[side][-1]['peak_mib']:8.1f} MiB", flush=True)
    sec = {s: min(r["step_s"] for r in rs) for s, rs in results.items()}
    mem = {s: min(r["peak_mib"] for r in rs) for s, rs in results.items()}
    first = results["off"][0]
    w, h = args.size
    print(f"model {args.arch}, batch {args.batch}, {w}x{h}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{first['device']} with {first['threads']} threads, {args.iters} measured steps x {args.repeats} repeats")
    for side in ("off", "on"):
        print(f"grad_checkpointing {side:>3}: {sec[side]:7.2f} s/step   peak memory {mem[side]:8.1f} MiB")
    print(f"peak memory {100 * (1 - mem['on'] / mem['off']):.1f}% lower")
    print(f"memory_ratio={mem['on'] / mem['off']:.3f} time_ratio={sec['on'] / sec['off']:.3f}")


if __name__ == "__main__":
    main()
