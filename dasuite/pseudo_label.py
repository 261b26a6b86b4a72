"""Offline pseudo-labelling: the body of ``dasuite pseudo-label``.

A trained model labels every image of one data role. For each image the logits are upsampled to the label's
resolution (the image's when there is no label), ``c = max softmax`` and ``y = argmax``; pixels with ``c`` below
the threshold become 255. Thresholds: one global ``threshold`` (e.g. 0.5), or per class
``percentile:p`` (CBST, Zou et al. ECCV'18): class k's threshold is the ``p``-quantile of the confidences of all
pixels predicted as k, found in a first pass over the data (a 1000-bin histogram per class, interpolated).

Files under ``out``: ``labels/<stem>.png`` (8-bit train ids), optionally ``confidence/<stem>.png`` (``round(255
c)``) and ``images/<stem>.png`` (the decoded image, so the folder is a self-contained dataset), each written
atomically; ``manifest.json``; ``folder_dataset.yaml`` (the ``folder`` dataset entry that trains on the result).
Progress (finished images, quality counts) is checkpointed in ``.progress.pt`` every ``FLUSH_EVERY`` images, so an
interrupted run resumes where it stopped and skips finished files; changed settings are an error.

Quality when ground truth exists: the kept pixels' confusion matrix against it (per-class IoU, mIoU) and the kept
fraction, plus a sweep over thresholds ``0, 0.05, ..., 0.95``: for each, mIoU of the pixels with ``c >= t`` and
the fraction of all pixels kept (one confusion matrix per 0.05 confidence bin, summed from the top).
Runs in one process on the accelerator's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from dasuite.config.schema import ExperimentConfig
from dasuite.data import build_dataset
from dasuite.data.augment import normalize
from dasuite.data.labels import IGNORE_INDEX
from dasuite.data.training import build_training_data
from dasuite.engine.accelerator import make_accelerator
from dasuite.engine.evaluate import save_prediction_png
from dasuite.engine.inference import predict
from dasuite.errors import DasuiteError
from dasuite.fileio import atomic_write, atomic_write_text, load_torch, load_weights, save_torch, write_json
from dasuite.metrics import compute_metrics
from dasuite.models import create_model
from dasuite.models.weights import load_state

SWEEP_BINS = 20  # thresholds 0, 0.05, ..., 0.95
HIST_BINS = 1000  # confidence histogram per class for percentile thresholds
FLUSH_EVERY = 20


def parse_class_thresholds(text: str) -> float:
    """``percentile:p`` with 0 <= p < 1 -> p."""
    kind, _, value = text.partition(":")
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if kind != "percentile" or not 0 <= p < 1:
        raise DasuiteError(f"--class-thresholds: expected percentile:P with 0 <= P < 1 (e.g. percentile:0.5), got "
                           f"{text!r}")
    return p


def load_network(cfg: ExperimentConfig, checkpoint: Path, num_classes: int, teacher: bool) -> torch.nn.Module:
    """The config's model with the checkpoint's weights; ``teacher``: the EMA teacher of a ``mean_teacher`` ``.pt``
    checkpoint (``last.pt``) instead of the student."""
    model = create_model(cfg.model.arch, num_classes, tiny=cfg.model.tiny, **cfg.model.options)
    if teacher:
        state = load_torch(checkpoint) if Path(checkpoint).suffix == ".pt" else {}
        weights = state.get("method", {}).get("teacher", {}).get("module") if isinstance(state, dict) else None
        if weights is None:
            raise DasuiteError(f"--teacher: {checkpoint} holds no EMA teacher (use a mean_teacher run's last.pt: "
                               f"--checkpoint last)")
    else:
        weights = load_weights(checkpoint)
    load_state(model, weights, f"checkpoint {checkpoint} for model {cfg.model.arch!r}")
    return model.eval()


def role_dataset(cfg: ExperimentConfig, role: str) -> torch.utils.data.Dataset:
    """``data.<role>``: training roles with their subset/mix (labels at the decode size), eval roles at full size."""
    entry = getattr(cfg.data, role, None)
    if entry is None:
        raise DasuiteError(f"the experiment has no data.{role} entry; pick another --dataset-role "
                           f"(source, target, val, test) or set it with an override")
    if role in ("val", "test"):
        return build_dataset(entry, cfg.data.resize, resize_labels=False)
    return build_training_data(role, entry, cfg.data.resize, cfg.data.num_workers)


def _save_png(array: torch.Tensor, path: Path) -> None:
    data = array.cpu().numpy()
    atomic_write(path, lambda f: Image.fromarray(data).save(f, format="PNG"))


class _Progress:
    """What ``.progress.pt`` holds: settings, per-image kept fractions, quality counts, class thresholds."""

    def __init__(self, path: Path, settings: dict, k: int, device: torch.device) -> None:
        self.path, self.settings = path, settings
        self.kept: dict[int, list] = {}  # dataset index -> [name, kept fraction]
        self.bins = torch.zeros(SWEEP_BINS * k * k, dtype=torch.long, device=device)  # labelled pixels per bin
        self.pixels = torch.zeros(SWEEP_BINS, dtype=torch.long, device=device)  # all pixels per bin
        self.matrix = torch.zeros(k * k, dtype=torch.long, device=device)  # kept pixels vs ground truth
        self.labelled = False
        self.class_thresholds: Optional[list[float]] = None
        if path.is_file():
            state = load_torch(path)
            if state["settings"] != settings:
                raise DasuiteError(f"{path.parent} holds pseudo-labels made with other settings "
                                   f"({state['settings']}); choose another --out or delete it")
            self.kept, self.labelled, self.class_thresholds = state["kept"], state["labelled"], state["thresholds"]
            self.bins, self.pixels, self.matrix = (state[k].to(device) for k in ("bins", "pixels", "matrix"))

    def save(self) -> None:
        save_torch({"settings": self.settings, "kept": self.kept, "labelled": self.labelled,
                    "thresholds": self.class_thresholds, "bins": self.bins.cpu(), "pixels": self.pixels.cpu(),
                    "matrix": self.matrix.cpu()}, self.path)


def _predict(model, item: dict, device: torch.device, accelerator, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence (max probability) and argmax at the label's size (the image's without a label), with the
    experiment's inference settings (``eval.mode``, ``scales``, ``flip``: ``dasuite.engine.inference``)."""
    image = item["image"].to(device).unsqueeze(0)
    label = item.get("label")
    size = tuple(label.shape[-2:]) if label is not None else tuple(image.shape[-2:])
    with torch.no_grad():
        scores = predict(model, normalize(image), size, settings, accelerator.autocast)
    confidence, pred = scores.softmax(1)[0].max(0)
    return confidence, pred


def _class_thresholds(model, dataset, todo, percentile: float, k: int, device, accelerator, settings,
                      bar) -> list[float]:
    """First pass: the ``percentile``-quantile of each class's predicted-pixel confidences (1.0 if never predicted
    -> nothing of it is kept), from 1000-bin histograms, interpolated linearly inside the bin that holds it."""
    hist = torch.zeros(k * HIST_BINS, dtype=torch.long, device=device)
    for i in tqdm(todo, desc="class thresholds", disable=not bar, leave=False):
        confidence, pred = _predict(model, dataset[i], device, accelerator, settings)
        b = (confidence * HIST_BINS).long().clamp(max=HIST_BINS - 1)
        hist += torch.bincount((pred * HIST_BINS + b).flatten(), minlength=k * HIST_BINS)
    counts = hist.view(k, HIST_BINS).double()
    cum = counts.cumsum(1)
    total = cum[:, -1]
    first = (cum > percentile * total.unsqueeze(1)).float().argmax(1, keepdim=True)  # bin holding the quantile
    before = cum.gather(1, first) - counts.gather(1, first)
    inside = (percentile * total.unsqueeze(1) - before) / counts.gather(1, first).clamp_min(1)
    quantile = ((first.double() + inside) / HIST_BINS).squeeze(1)
    thresholds = torch.where(total > 0, quantile, torch.ones(k, dtype=torch.float64, device=device))
    return thresholds.tolist()


def pseudo_label(cfg: ExperimentConfig, checkpoint: Path, role: str, out: Path, *, threshold: Optional[float] = None,
                 class_percentile: Optional[float] = None, save_confidence: bool = False, save_images: bool = False,
                 teacher: bool = False, progress: bool = True) -> dict:
    """Write pseudo-labels for ``data.<role>`` to ``out`` (module docstring); returns the manifest."""
    if threshold is not None and class_percentile is not None:
        raise DasuiteError("give either --threshold or --class-thresholds, not both")
    if threshold is None and class_percentile is None:
        threshold = 0.0
    if threshold is not None and not 0 <= threshold <= 1:
        raise DasuiteError(f"--threshold must be in [0, 1], got {threshold}")
    dataset = role_dataset(cfg, role)
    classes = dataset.classes
    k = classes.num_classes
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision)
    device = accelerator.device
    model = load_network(cfg, Path(checkpoint), k, teacher).to(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "teacher": teacher, "experiment": cfg.name,
                "role": role, "threshold": threshold, "class_percentile": class_percentile,
                "num_images": len(dataset),
                "inference": cfg.eval.model_dump(mode="json", exclude={"batch_size", "class_subsets"})}
    state = _Progress(out / ".progress.pt", settings, k, device)
    bar = progress and accelerator.is_main_process
    if class_percentile is not None and state.class_thresholds is None:
        state.class_thresholds = _class_thresholds(model, dataset, range(len(dataset)), class_percentile, k, device,
                                                   accelerator, cfg.eval, bar)
        state.save()
    per_class = (torch.tensor(state.class_thresholds, device=device) if state.class_thresholds is not None else None)
    todo = [i for i in range(len(dataset)) if i not in state.kept]
    for n, i in enumerate(tqdm(todo, desc="pseudo-label", disable=not bar), start=1):
        item = dataset[i]
        confidence, pred = _predict(model, item, device, accelerator, cfg.eval)
        limit = per_class[pred] if per_class is not None else threshold
        keep = confidence >= limit
        stem = Path(item["name"]).with_suffix("").as_posix()
        labelled = torch.where(keep, pred, torch.full_like(pred, IGNORE_INDEX))
        save_prediction_png(labelled, out / "labels" / f"{stem}.png")
        if save_confidence:
            _save_png((confidence * 255).round().to(torch.uint8), out / "confidence" / f"{stem}.png")
        if save_images:
            _save_png(item["image"].permute(1, 2, 0).contiguous(), out / "images" / f"{stem}.png")
        b = (confidence * SWEEP_BINS).long().clamp(max=SWEEP_BINS - 1)
        state.pixels += torch.bincount(b.flatten(), minlength=SWEEP_BINS)
        label = item.get("label")
        if label is not None:
            label = label.to(device).long()
            valid = label != IGNORE_INDEX
            cell = label.clamp(0, k - 1) * k + pred
            state.bins += torch.bincount((b * k * k + cell)[valid], minlength=SWEEP_BINS * k * k)
            state.matrix += torch.bincount(cell[valid & keep], minlength=k * k)
            state.labelled = True
        state.kept[i] = [stem, float(keep.float().mean())]
        if n % FLUSH_EVERY == 0:
            state.save()
    state.save()
    manifest = _manifest(state, cfg, role, out, classes, save_confidence, save_images)
    write_json(manifest, out / "manifest.json")
    atomic_write_text(out / "folder_dataset.yaml", yaml.safe_dump(manifest["folder_dataset"], sort_keys=False))
    return manifest


def _manifest(state: _Progress, cfg: ExperimentConfig, role: str, out: Path, classes, save_confidence: bool,
              save_images: bool) -> dict[str, Any]:
    k, names = classes.num_classes, list(classes.names)
    files = [{"name": stem, "label": f"labels/{stem}.png", "kept": kept}
             for _, (stem, kept) in sorted(state.kept.items())]
    total = int(state.pixels.sum())
    manifest: dict[str, Any] = {
        **state.settings, "classes": names,
        "class_thresholds": dict(zip(names, state.class_thresholds)) if state.class_thresholds else None,
        "labels_dir": "labels", "confidence_dir": "confidence" if save_confidence else None,
        "images_dir": "images" if save_images else None, "files": files,
        "kept_fraction": sum(f["kept"] for f in files) / max(len(files), 1), "quality": None, "sweep": None,
    }
    if state.labelled:
        manifest["quality"] = compute_metrics(state.matrix.view(k, k).cpu()).to_json(names)
        per_bin = state.bins.view(SWEEP_BINS, k, k).cpu().flip(0).cumsum(0).flip(0)  # pixels with bin >= t
        kept_pixels = state.pixels.cpu().flip(0).cumsum(0).flip(0)
        manifest["sweep"] = [{"threshold": t / SWEEP_BINS, "mIoU": compute_metrics(per_bin[t]).to_json(names)["mIoU"],
                              "kept": int(kept_pixels[t]) / max(total, 1)} for t in range(SWEEP_BINS)]
    manifest["folder_dataset"] = {
        "name": "folder", "root": str(out.resolve()), "split": "train",
        "images_dir": "images" if save_images else "<folder of the images, same relative names>",
        "labels_dir": "labels", "classes": names, "palette": [list(c) for c in classes.palette]}
    return manifest


def format_quality(manifest: dict) -> str:
    """The pseudo-labels' per-class IoU and the threshold sweep as text (empty without ground truth)."""
    if not manifest.get("quality"):
        return f"{len(manifest['files'])} images, kept fraction {manifest['kept_fraction']:.3f} (no ground truth)"
    from dasuite.tables import format_result

    lines = [format_result(manifest["quality"], "table", per_class=True),
             f"kept fraction: {manifest['kept_fraction']:.4f}", "", "threshold  mIoU (%)  kept (%)"]
    for row in manifest["sweep"]:
        miou = "  n/a" if row["mIoU"] is None else f"{100 * row['mIoU']:6.2f}"
        lines.append(f"{row['threshold']:9.2f}  {miou:>8}  {100 * row['kept']:8.2f}")
    return "\n".join(lines)
