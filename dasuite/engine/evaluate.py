"""Evaluation: confusion matrix on the device, logits upsampled to the label's resolution before argmax.

Each process evaluates its own shard (no padding, no duplicates); the matrix, loss sums, image counts and timings
are summed across processes once at the end, so every sample counts exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dasuite.data.augment import normalize
from dasuite.data.labels import IGNORE_INDEX, SYNTHIA13, SYNTHIA16, ClassTable, subset_miou
from dasuite.data.loaders import build_eval_loader
from dasuite.engine.inference import predict
from dasuite.fileio import atomic_write
from dasuite.metrics import ConfusionMatrix, compute_metrics

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLASS_SUBSETS = {"synthia16": SYNTHIA16, "synthia13": SYNTHIA13}


def add_subset_summaries(result: dict, subsets: list[str], classes: ClassTable) -> dict:
    """Add ``mIoU_<subset>`` (mean IoU over that subset's classes, undefined classes left out) to ``result``."""
    for name in subsets:
        result[f"mIoU_{name}"] = subset_miou(result["iou"], CLASS_SUBSETS[name], classes)
    return result


def save_prediction_png(pred: torch.Tensor, path: Path) -> None:
    """Write an HxW map of class indices as an 8-bit PNG, atomically."""
    array = pred.to(torch.uint8).cpu().numpy()
    atomic_write(path, lambda f: Image.fromarray(array, mode="L").save(f, format="PNG"))


@torch.no_grad()
def evaluate(
    model: "nn.Module",
    dataset: torch.utils.data.Dataset,
    accelerator: "Accelerator",
    classes: ClassTable,
    *,
    inference: Any = None,
    batch_size: int = 1,
    num_workers: int = 0,
    save_predictions: Optional[Path] = None,
    num_vis: int = 0,
    progress: bool = False,
    desc: str = "eval",
    class_subsets: tuple[str, ...] = (),
) -> tuple[dict, Optional[torch.Tensor]]:
    """Evaluate ``model`` on ``dataset``; return (result in the ``dasuite eval`` JSON format, visual grid or None).

    ``inference``: the ``eval`` section (whole or sliding window, scales, flip; ``dasuite.engine.inference``); with
    several passes ``mean_loss`` is the negative log of the averaged probability of the true class. The grid (uint8 3xHxW, main process only) stacks rows of image | ground truth | prediction in class colours for
    the first ``num_vis`` images of this process's shard. ``sec_per_image`` is forward time (including the upsampling
    and argmax) per image, averaged over all processes' images.
    """
    device = accelerator.device
    num_classes = classes.num_classes
    loader = build_eval_loader(dataset, batch_size, num_workers, accelerator.process_index, accelerator.num_processes)
    matrix = ConfusionMatrix(num_classes, device=device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images, seconds
    vis: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc=desc, disable=not (progress and accelerator.is_main_process), leave=False)
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        _sync(device)
        start = time.perf_counter()
        logits = predict(model, normalize(images), labels.shape[-2:], inference, accelerator.autocast)
        pred = logits.argmax(1)
        _sync(device)
        totals[3] += time.perf_counter() - start
        totals[0] += F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        totals[1] += (labels != IGNORE_INDEX).sum()
        totals[2] += images.shape[0]
        matrix.update(pred, labels)
        if save_predictions is not None:
            for name, p in zip(batch["name"], pred):
                save_prediction_png(p, Path(save_predictions) / (Path(name).stem + ".png"))
        if len(vis) < num_vis:
            vis.extend(_vis_rows(images, labels, pred, classes)[: num_vis - len(vis)])
    model.train(was_training)
    total_matrix = accelerator.reduce(matrix.matrix, reduction="sum")
    totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, pixels, n_images, seconds = totals.tolist()
    result = compute_metrics(total_matrix).to_json(
        list(classes.names),
        mean_loss=loss_sum / pixels if pixels else None,
        sec_per_image=seconds / n_images if n_images else None,
        num_images=int(n_images),
    )
    add_subset_summaries(result, list(class_subsets), classes)
    grid = torch.cat(vis, dim=1) if vis and accelerator.is_main_process else None
    return result, grid


def _vis_rows(images: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor, classes: ClassTable) -> list[torch.Tensor]:
    """One 3xHx(3W) uint8 row per image: input | ground truth | prediction."""
    if images.shape[-2:] != labels.shape[-2:]:
        images = F.interpolate(images.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    rgb = images.to(torch.uint8)
    return [torch.cat([i, classes.colorize(l), classes.colorize(p)], dim=-1).cpu()
            for i, l, p in zip(rgb, labels, pred)]
