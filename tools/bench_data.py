"""Data side vs model side: images per second the training data pipeline delivers against those a training step
consumes, side by side in one run.

Data side: the real CamVid train images (367) through dasuite's training stream exactly as a run builds it
(``build_training_data`` + ``TrainingData.loader``: decode + resize to 384x288 in ``--workers`` DataLoader workers,
batch ``--batch``), moved to the device and augmented there by ``DeviceAugment`` (``weak``: the CamVid recipe's
rescale 0.5-2 + flip + colour jitter; ``strong``: the same plus the strong photometric part, AutoAugment policy,
jitter, grayscale, blur). Model side: full-width SegFormer-B0 (11 classes), forward + cross-entropy + backward +
AdamW step on batches of the same shape. Each side runs ``--warmup`` untimed then ``--batches`` / ``--iters`` timed
steps on the same device (CUDA when available), synchronised before reading the clock.

Prints both sides, their ratio per pipeline, and as its last line ``data_to_model_ratio=<x>`` for ``--pipeline``
(target: >= 3, i.e. the data side never starves the model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)

def _images_per_second(step, warmup: int, steps: int, batch: int, device) -> float:
    """Run ``step`` ``warmup`` times untimed, then ``steps`` times timed (synchronised); images per second."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)



def data_side(args, device, pipeline: str) -> float:
    """Images per second of loader + device augmentation."""
    from dasuite.config import load_config
    from dasuite.data.augment import DeviceAugment
    from dasuite.data.training import build_training_data

    w, h = args.size
    cfg = load_config(ROOT / "experiments" / "camvid" / "segformer_b0.yaml", [
        f"data.source.root={args.root}", f"data.resize=[{w},{h}]", f"data.num_workers={args.workers}",
        f"data.source.augment.pipeline={pipeline}"])
    data = build_training_data("source", cfg.data.source, cfg.data.resize, cfg.data.num_workers)
    loader = data.loader(args.batch, args.workers, seed=0)
    augment = DeviceAugment(data.augment)

    def step() -> None:
        batch = next(loader)
        augment(batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True))

    return _images_per_second(step, args.warmup, args.batches, args.batch, device)


def model_side(args, device) -> float:
    """Images per second of a SegFormer-B0 training step (forward, loss, backward, optimizer step)."""
    import torch

    from dasuite.losses import seg_loss
    from dasuite.models import create_model

    torch.manual_seed(0)
    w, h = args.size
    model = create_model("segformer_b0", 11).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    images = torch.randn(args.batch, 3, h, w, device=device)
    labels = torch.randint(0, 11, (args.batch, h, w), device=device)

    def step() -> None:
        loss = seg_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _images_per_second(step, args.model_warmup, args.iters, args.batch, device)


def main() -> None:
    default_root = Path(os.environ.get("DASUITE_DATA", ROOT.parent / "shared" / "data")) / "camvid"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root, help="CamVid folder (SegNet layout)")
    parser.add_argument("--size", type=int, nargs=2, default=[384, 288], metavar=("W", "H"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="untimed data batches")
    parser.add_argument("--batches", type=int, default=40, help="timed data batches")
    parser.add_argument("--model-warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed training steps")
    parser.add_argument("--pipeline", choices=["weak", "strong"], default="weak", help="pipeline of the last line")
    args = parser.parse_args()
    if not (args.root / "train").is_dir():
        sys.exit(f"no CamVid train folder under {args.root}; pass --root or set DASUITE_DATA")

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    rates = {p: data_side(args, device, p) for p in ("weak", "strong")}
    model = model_side(args, device)
    w, h = args.size
    print(f"device {device} ({threads} torch threads), batch {args.batch}, {w}x{h}, {args.workers} loader workers")
    for p, rate in rates.items():
        print(f"data side ({p:>6}): {rate:8.1f} images/s   ratio to model {rate / model:6.2f}")
    print(f"model side (SegFormer-B0 train step): {model:8.2f} images/s")
    print(f"data_to_model_ratio={rates[args.pipeline] / model:.2f}")


if __name__ == "__main__":
    main()
