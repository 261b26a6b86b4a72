"""Confusion-matrix update throughput: dasuite's ConfusionMatrix vs torchmetrics' MulticlassConfusionMatrix.

Both update on the same random batches (int64 argmax-like predictions, labels with ~10% ignore pixels),
interleaved repeat by repeat so machine noise hits both alike; after a warm-up the median repeat time gives
the throughput in Mpixels/s. torchmetrics is measured with its default argument validation and without it
(``validate_args=False``, its fastest path); the ratio is taken against the faster of the two.

    python tools/bench_metrics.py [--device cuda] [--repeats 7] [--threads 1]

Last line: ``metric_speed_ratio=<ours / torchmetrics throughput>`` (the smallest over the sizes measured).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from dasuite.data.labels import IGNORE_INDEX
from dasuite.metrics import ConfusionMatrix

SIZES = ((8, 512, 1024), (8, 128, 256))


def _batches(num_classes: int, shape: tuple[int, ...], count: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        target = torch.randint(0, num_classes, shape, generator=g)
        target[torch.rand(shape, generator=g) < 0.1] = IGNORE_INDEX
        pred = torch.randint(0, num_classes, shape, generator=g)
        out.append((pred.to(device), target.to(device)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_updates(update: Callable, batches: list, device: torch.device) -> float:
    """Seconds for one update per batch, synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    for pred, target in batches:
        update(pred, target)
    _sync(device)
    return time.perf_counter() - start


def bench_metric_update(
    num_classes: int = 19,
    batch: int = 8,
    height: int = 512,
    width: int = 1024,
    repeats: int = 7,
    warmup: int = 2,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> float:
    """Throughput ratio ours / torchmetrics (fastest configuration) of the confusion-matrix update.

    Each repeat runs one update per batch (3 distinct batches of ``batch x height x width``) for every contender.
    Returns the ratio of median throughputs (> 1: ours is faster); prints a line per contender when ``verbose``.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batches = _batches(num_classes, (batch, height, width), 3, device)
    ours = ConfusionMatrix(num_classes, device=device)
    contenders = {
        "dasuite ConfusionMatrix": ours.update,
        "torchmetrics (validate_args=True)": MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX).to(
            device
        ).update,
        "torchmetrics (validate_args=False)": MulticlassConfusionMatrix(
            num_classes, ignore_index=IGNORE_INDEX, validate_args=False
        ).to(device).update,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + repeats):
        for name, update in contenders.items():
            seconds = _time_updates(update, batches, device)
            if i >= warmup:
                times[name].append(seconds)
    pixels = len(batches) * batch * height * width
    mpix = {name: pixels / statistics.median(ts) / 1e6 for name, ts in times.items()}
    ours_mpix = mpix.pop("dasuite ConfusionMatrix")
    best_name = max(mpix, key=mpix.get)
    ratio = ours_mpix / mpix[best_name]
    if verbose:
        shape = f"{batch}x{height}x{width}"
        print(f"[{device.type}] K={num_classes} batch {shape}, {repeats} repeats x {len(batches)} updates")
        print(f"  {'dasuite ConfusionMatrix':36s} {ours_mpix:9.1f} Mpix/s")
        for name, value in mpix.items():
            print(f"  {name:36s} {value:9.1f} Mpix/s   ours/this = {ours_mpix / value:.2f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ratios = [
        bench_metric_update(args.classes, b, h, w, repeats=args.repeats, warmup=args.warmup, device=args.device)
        for b, h, w in SIZES
    ]
    print(f"metric_speed_ratio={min(ratios):.2f}")


if __name__ == "__main__":
    main()
