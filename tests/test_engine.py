"""The training loop end to end on tiny toy runs: files, resume equivalence, determinism, errors."""

import json

import pytest
import torch

from dasuite.engine.loop import Trainer, train
from dasuite.errors import DasuiteError
from dasuite.fileio import load_torch, save_torch
from dasuite.methods import source_only
from dasuite.rundir import RunDir
from tests.conftest import tiny_toy_config, train_interrupted


def _metrics(summary):
    return summary["final"]["mIoU"], summary["final"]["mean_loss"], summary["best"]["iteration"]


def test_run_writes_the_run_directory(tmp_path):
    cfg = tiny_toy_config(tmp_path)
    summary = train(cfg)
    run = RunDir.for_config(cfg)
    assert run.config.is_file() and run.last.is_file() and run.best.is_file() and run.summary.is_file()
    on_disk = json.loads(run.summary.read_text())
    assert on_disk["final"]["iteration"] == 6 and on_disk["best"]["iteration"] in (3, 6)
    assert set(on_disk["test"]) >= {"iteration", "mIoU", "mAcc", "aAcc", "fwIoU", "iou", "acc", "mean_loss",
                                    "sec_per_image", "num_images"}
    assert on_disk["test"]["num_images"] == 4
    assert summary == on_disk and on_disk["eval_model"] == "student"
    lines = [json.loads(l) for l in run.metrics.read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [3, 6]
    assert list((run.root / "tensorboard").rglob("events.out.tfevents*"))
    assert load_torch(run.last)["iteration"] == 6
    assert not list(run.checkpoints.glob("*.tmp")), "temporary files left behind"


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train(tiny_toy_config(tmp_path / "a"))
    b = train(tiny_toy_config(tmp_path / "b"))
    assert _metrics(a) == _metrics(b)
    assert a["final"]["iou"] == b["final"]["iou"]


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = train(tiny_toy_config(tmp_path / "full"))
    cfg = tiny_toy_config(tmp_path / "cut")
    train_interrupted(cfg, source_only.SourceOnly, 4, monkeypatch)
    assert load_torch(RunDir.for_config(cfg).last)["iteration"] == 3
    with pytest.raises(DasuiteError, match="--resume"):
        Trainer(cfg)
    resumed = train(cfg, resume=True)
    assert _metrics(resumed) == _metrics(full)
    assert resumed["test"]["iou"] == full["test"]["iou"]
    lines = RunDir.for_config(cfg).metrics.read_text().splitlines()
    assert [json.loads(l)["iteration"] for l in lines] == [3, 6]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_toy_config(tmp_path, "train.log_interval=1")
    original = source_only.SourceOnly.training_step

    def nan_from_4(self, batches, step):
        out = original(self, batches, step)
        if step >= 4:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(source_only.SourceOnly, "training_step", nan_from_4)
    with pytest.raises(DasuiteError, match="non-finite loss.*iteration 3"):
        train(cfg)
    state = load_torch(RunDir.for_config(cfg).last)
    assert state["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_torch({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_torch({"a": Boom()}, path)
    assert torch.equal(load_torch(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_init_from_loads_weights_with_fresh_schedule(tmp_path):
    first = tiny_toy_config(tmp_path / "a")
    train(first)
    best = RunDir.for_config(first).best
    second = tiny_toy_config(tmp_path / "b", f"train.init_from={best}", "train.max_iters=3")
    trainer = Trainer(second)
    loaded = trainer.accelerator.unwrap_model(trainer.method.model).state_dict()
    from safetensors.torch import load_file
    ref = load_file(str(best))
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
    assert trainer.iteration == 0


def test_short_toy_training_beats_chance_on_the_target(tmp_path):
    """60 iterations of the tiny SegFormer on synthetic toy images: on the real-style target split its mIoU must
    clearly beat the best constant predictor (every pixel = the most frequent class)."""
    cfg = tiny_toy_config(tmp_path, "train.batch_size=4", "train.eval_interval=60", "train.checkpoint_interval=60",
                          "train.log_interval=20", "optim.lr=0.003", "data.val.num_images=8", max_iters=60)
    summary = train(cfg)
    from dasuite.data import build_dataset
    from dasuite.metrics import ConfusionMatrix, compute_metrics

    val = build_dataset(cfg.data.val)
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    counts = torch.bincount(labels[labels != 255].flatten(), minlength=19)
    constant = ConfusionMatrix(19)
    constant.update(torch.full_like(labels, int(counts.argmax())), labels)
    chance = compute_metrics(constant.matrix).miou
    assert summary["final"]["mIoU"] > 2 * chance, (summary["final"]["mIoU"], chance)


def test_class_subset_summaries_for_synthia_protocol():
    from dasuite.data.labels import CITYSCAPES
    from dasuite.engine.evaluate import add_subset_summaries

    iou = {name: 0.5 for name in CITYSCAPES.names}
    iou.update({"terrain": 0.0, "truck": 0.0, "train": 0.0, "wall": 0.2, "fence": 0.2, "pole": None})
    result = add_subset_summaries({"iou": iou}, ["synthia16", "synthia13"], CITYSCAPES)
    assert result["mIoU_synthia16"] == pytest.approx((11 * 0.5 + 2 * 0.2 + 2 * 0.5) / 15)  # pole undefined: skipped
    assert result["mIoU_synthia13"] == pytest.approx(0.5)


def test_resized_run_evaluates_at_full_label_resolution(tmp_path):
    """With data.resize, training sees resized labels, while val/test keep the stored 64x48 labels and logits are
    upsampled to them (the loader must accept label != image size for evaluation)."""
    cfg = tiny_toy_config(tmp_path, "data.resize=[40,30]", "data.source.augment.crop=[32,32]", max_iters=3)
    trainer = Trainer(cfg)
    assert tuple(trainer.datasets["val"][0]["image"].shape) == (3, 30, 40)
    assert tuple(trainer.datasets["val"][0]["label"].shape) == (48, 64)
    summary = trainer.fit()
    assert summary["test"]["num_images"] == 4 and summary["final"]["mIoU"] is not None


def test_init_from_with_other_width_is_a_clear_error(tmp_path):
    first = tiny_toy_config(tmp_path / "a", max_iters=3)
    train(first)
    other = tiny_toy_config(tmp_path / "b", "model.tiny=false", f"train.init_from={RunDir.for_config(first).best}")
    with pytest.raises(DasuiteError, match="weight shapes do not match"):
        Trainer(other)


def test_fp16_loss_scale_is_checkpointed_and_restored(tmp_path):
    """With fp16 (CUDA) Accelerate keeps a GradScaler; its scale and growth tracker must survive a resume. The CPU has
    no fp16 scaler, so a CPU GradScaler stands in for it."""
    cfg = tiny_toy_config(tmp_path)
    first = Trainer(cfg)
    first.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)
    first._save_last()
    assert load_torch(RunDir.for_config(cfg).last)["scaler"]["scale"] == 1234.0
    resumed = Trainer(cfg, resume=True)
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    resumed._load_last()
    assert resumed.accelerator.scaler.get_scale() == 1234.0
