"""Whole-image vs sliding-window inference: peak memory and time of one 2048x1024 image (Cityscapes' full
resolution) for SegFormer-B0 and a large model (SegFormer-B5 by default, or DeepLabV2-R101), measured side by side.

Each (model, mode) runs in its own process, so each peak is its own: on CUDA ``max_memory_allocated``, on the CPU the
process's peak resident set size (VmHWM, reset after the model is built) minus the resident size at that point, i.e.
what inference adds on top of the weights (the total is printed too). Sliding windows: 1024x1024, stride 768
(SegFormer's Cityscapes protocol; ``--crop`` for others), ``--window-batch`` windows per call. Time: median of ``--repeat`` forward passes
after one warm-up pass, through ``dasuite.engine.inference.predict`` exactly as evaluation calls it.

    python tools/bench_eval.py                       # B0 and B5, whole and slide
    python tools/bench_eval.py --large deeplabv2_r101 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import _peak_mib, _reset_peak  # noqa: E402  (the engine benchmark's memory probes)

SIZE = (1024, 2048)  # H, W


def measure(arch: str, mode: str, repeat: int, window_batch: int, crop: int = 1024, *, tiny: bool = False,
            size: tuple[int, int] = SIZE) -> dict:
    from dasuite.config.schema import EvalConfig
    from dasuite.engine.inference import predict
    from dasuite.models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(arch, 19, tiny=tiny).to(device).eval()
    slide = mode == "slide"
    passes = {"tta2": {"flip": True}, "tta4": {"scales": [1.0, 1.0], "flip": True}}.get(mode, {})  # averaged passes
    settings = EvalConfig(mode="slide" if slide else "whole", crop=(crop, crop) if slide else None,
                          stride=(crop * 3 // 4,) * 2 if slide else None, window_batch=window_batch, **passes)
    image = torch.randn(1, 3, *size, device=device)
    with torch.no_grad():
        predict(model, image, size, settings)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        base = _resident_mib() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
        _reset_peak(device)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            scores = predict(model, image, size, settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = _peak_mib(device)
    assert scores.shape == (1, 19, *size)
    return {"arch": arch, "mode": mode, "seconds": statistics.median(times), "peak_mib": peak,
            "added_mib": peak - base, "device": device.type}


def _resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", default="segformer_b5", help="The large model (segformer_b5 or deeplabv2_r101).")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--window-batch", type=int, default=1)
    parser.add_argument("--crop", type=int, default=1024, help="Square window side (stride: 3/4 of it).")
    parser.add_argument("--only-large", action="store_true", help="Skip SegFormer-B0.")
    parser.add_argument("--passes", action="store_true", help="Only SegFormer-B0: 1, 2 (flip) and 4 (scales [1, 1] "
                        "x flip) full-size passes: beyond the one accumulator, the peak must not grow with the passes.")
    parser.add_argument("--tiny", action="store_true", help="Tiny widths (a smoke test of this script).")
    parser.add_argument("--size", type=int, nargs=2, default=[SIZE[1], SIZE[0]], metavar=("W", "H"))
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.repeat, args.window_batch, args.crop, tiny=args.tiny,
                                 size=(args.size[1], args.size[0]))))
        return
    if args.passes:
        one, two, four = (json.loads(subprocess.run(
            [sys.executable, __file__, "--child", "segformer_b0", mode, "--repeat", "1"], capture_output=True,
            text=True, check=True).stdout.split("\n")[-2]) for mode in ("whole", "tta2", "tta4"))
        print(f"segformer_b0 peak: 1 pass {one['peak_mib']:.0f} MiB, 2 passes {two['peak_mib']:.0f} MiB, 4 passes "
              f"{four['peak_mib']:.0f} MiB; 4/2 peak_ratio={four['peak_mib'] / two['peak_mib']:.3f}")
        return
    archs = (args.large,) if args.only_large else ("segformer_b0", args.large)
    rows = {}
    for arch in archs:
        for mode in ("whole", "slide"):
            proc = subprocess.run([sys.executable, __file__, "--child", arch, mode, "--repeat", str(args.repeat),
                                   "--window-batch", str(args.window_batch), "--crop", str(args.crop),
                                   "--size", *map(str, args.size), *(["--tiny"] if args.tiny else [])],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            rows[arch, mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = rows[arch, mode]
            print(f"{arch:>16} {mode:>5}: {r['seconds']:8.2f} s  peak {r['peak_mib']:8.0f} MiB  added by inference "
                  f"{r['added_mib']:8.0f} MiB ({r['device']})", flush=True)
    for arch in archs:
        whole, slide = rows[arch, "whole"], rows[arch, "slide"]
        print(f"{arch} (windows {args.crop}): slide/whole time_ratio={slide['seconds'] / whole['seconds']:.3f} "
              f"peak_ratio={slide['peak_mib'] / whole['peak_mib']:.3f} "
              f"added_memory_ratio={slide['added_mib'] / whole['added_mib']:.3f}")


if __name__ == "__main__":
    main()
