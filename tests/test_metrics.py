"""ConfusionMatrix / compute_metrics: cross-checked against torchmetrics, absent-class policy, 2-process reduce."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dasuite.metrics import ConfusionMatrix, compute_metrics, reduce_matrix

IGNORE = 255


def random_batch(seed: int, num_classes: int, shape=(3, 17, 23), ignore_frac: float = 0.15):
    """Random pred/target (int64) with ignore pixels; every class appears in both label and prediction."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    # Predictions agree with the label 60% of the time so the figures are not all near 1/K.
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, num_classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < ignore_frac] = IGNORE
    target.view(-1)[:num_classes] = torch.arange(num_classes)
    pred.view(-1)[:num_classes] = torch.randperm(num_classes, generator=g)
    pred.view(-1)[num_classes : 2 * num_classes] = torch.arange(num_classes)
    return pred, target


@pytest.mark.parametrize("num_classes", [2, 5, 19])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics(seed: int, num_classes: int) -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    pred, target = random_batch(seed, num_classes)
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)

    def tm_value(metric_cls, **kwargs):
        metric = metric_cls(num_classes=num_classes, ignore_index=IGNORE, **kwargs)
        metric.update(pred, target)
        return metric.compute().double()

    tm_matrix = tm_value(tm.MulticlassConfusionMatrix).long()
    assert torch.equal(cm.matrix, tm_matrix)
    m = compute_metrics(cm.matrix)
    close = dict(rtol=0, atol=1e-6)
    torch.testing.assert_close(m.iou, tm_value(tm.MulticlassJaccardIndex, average=None), **close)
    torch.testing.assert_close(m.acc, tm_value(tm.MulticlassAccuracy, average=None), **close)
    assert m.miou == pytest.approx(float(tm_value(tm.MulticlassJaccardIndex, average="macro")), abs=1e-6)
    assert m.macc == pytest.approx(float(tm_value(tm.MulticlassAccuracy, average="macro")), abs=1e-6)
    assert m.aacc == pytest.approx(float(tm_value(tm.MulticlassAccuracy, average="micro")), abs=1e-6)
    # fwIoU from torchmetrics' matrix, written out independently: sum_i freq_i * IoU_i over labelled classes.
    c = tm_matrix.double()
    gt, pr, tp = c.sum(1), c.sum(0), c.diagonal()
    fw = sum(float(gt[i] / c.sum() * tp[i] / (gt[i] + pr[i] - tp[i])) for i in range(num_classes) if gt[i] > 0)
    assert m.fwiou == pytest.approx(fw, abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in (m.miou, m.macc, m.aacc, m.fwiou))


def test_batches_equal_concatenation() -> None:
    parts = [random_batch(s, 7, shape=(n, 9, 11)) for s, n in ((3, 1), (4, 2), (5, 3))]
    split = ConfusionMatrix(7)
    for pred, target in parts:
        split.update(pred, target)
    whole = ConfusionMatrix(7)
    whole.update(torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts]))
    assert torch.equal(split.matrix, whole.matrix)
    assert int(whole.matrix.sum()) == sum(int((t != IGNORE).sum()) for _, t in parts)


def brute_force(pred: torch.Tensor, target: torch.Tensor, k: int, ignore: int = IGNORE) -> torch.Tensor:
    m = torch.zeros(k, k, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != ignore and 0 <= t < k and 0 <= p < k:
            m[t, p] += 1
    return m


def test_out_of_range_values_are_skipped() -> None:
    k = 4
    target = torch.tensor([[0, 1, 2, 3, 4, 200, -1, IGNORE, 1, 2], [3, 3, 0, 1, 2**40, -(2**40), 0, 1, 2, 3]])
    pred = torch.tensor([[0, 1, 1, 3, 0, 0, 0, 0, -1, 4], [3, 2, 0, 0, 1, 1, 2**33 + 1, 9, 2, 2]])
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    expected = brute_force(pred, target, k)
    assert torch.equal(cm.matrix, expected)
    assert int(expected.sum()) == 10  # only in-range (label, prediction) pairs are counted


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_label_dtypes_agree(dtype: torch.dtype) -> None:
    pred, target = random_batch(6, 19)
    reference = ConfusionMatrix(19)
    reference.update(pred, target)
    cm = ConfusionMatrix(19)
    cm.update(pred.to(dtype), target.to(dtype))
    assert torch.equal(cm.matrix, reference.matrix)
    assert target.max() == IGNORE  # the caller's tensors are not modified


def test_ignore_index_inside_class_range() -> None:
    pred, target = random_batch(7, 5, ignore_frac=0.0)
    cm = ConfusionMatrix(5, ignore_index=0)
    cm.update(pred, target)
    assert torch.equal(cm.matrix, brute_force(pred, target, 5, ignore=0))
    assert int(cm.matrix[0].sum()) == 0


def test_absent_class_policy() -> None:
    # class 0: present and half right; class 1: predicted but never labelled; class 2: absent everywhere.
    matrix = torch.tensor([[2, 2, 0], [0, 0, 0], [0, 0, 0]])
    m = compute_metrics(matrix)
    assert m.iou[0] == pytest.approx(0.5) and m.iou[1] == 0.0 and math.isnan(m.iou[2])
    assert m.acc[0] == pytest.approx(0.5) and math.isnan(m.acc[1]) and math.isnan(m.acc[2])
    assert m.miou == pytest.approx(0.25)  # (0.5 + 0) / 2: class 2 excluded, class 1 counts as 0
    assert m.macc == pytest.approx(0.5)
    assert m.aacc == pytest.approx(0.5)
    assert m.fwiou == pytest.approx(0.5)  # freq(class 0) = 1


def test_empty_matrix_is_all_undefined() -> None:
    m = ConfusionMatrix(3).compute()
    assert all(math.isnan(v) for v in (m.miou, m.macc, m.aacc, m.fwiou))
    assert torch.isnan(m.iou).all() and torch.isnan(m.acc).all()
    result = m.to_json(["a", "b", "c"])
    assert result["mIoU"] is None and result["iou"] == {"a": None, "b": None, "c": None}


def test_to_json_shape() -> None:
    m = compute_metrics(torch.tensor([[3, 1, 0], [0, 4, 0], [0, 1, 0]]))
    result = m.to_json(["road", "car", "sky"], mean_loss=0.5, sec_per_image=0.02, num_images=7)
    assert set(result) == {"mIoU", "mAcc", "aAcc", "fwIoU", "iou", "acc", "mean_loss", "sec_per_image", "num_images"}
    assert list(result["iou"]) == ["road", "car", "sky"]
    assert result["iou"]["sky"] == 0.0 and result["acc"]["sky"] == 0.0  # labelled, never right
    assert result["iou"]["car"] == pytest.approx(4 / 6) and result["acc"]["car"] == 1.0
    assert result["aAcc"] == pytest.approx(7 / 9) and result["num_images"] == 7
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    defaults = m.to_json(["road", "car", "sky"])
    assert defaults["mean_loss"] is None and defaults["sec_per_image"] is None and defaults["num_images"] is None
    assert m.to_json(["a", "b", "c"], mean_loss=float("nan"))["mean_loss"] is None
    with pytest.raises(ValueError, match="3 classes"):
        m.to_json(["road", "car"])


def test_reset_merge_and_errors() -> None:
    pred, target = random_batch(8, 4)
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    other = ConfusionMatrix(4)
    other.merge(cm.matrix)
    other.merge(cm)
    assert torch.equal(other.matrix, 2 * cm.matrix)
    cm.reset()
    assert int(cm.matrix.sum()) == 0
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(pred, target[:1])
    with pytest.raises(TypeError, match="argmax"):
        cm.update(pred.float(), target)
    with pytest.raises(ValueError, match="merge"):
        cm.merge(torch.zeros(3, 3, dtype=torch.int64))


def test_single_process_reduce_is_a_copy() -> None:
    accelerate = pytest.importorskip("accelerate")
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    reduced = reduce_matrix(cm.matrix, accelerate.Accelerator(cpu=True))
    assert torch.equal(reduced, cm.matrix) and reduced.data_ptr() != cm.matrix.data_ptr()


def _two_process_worker(preds: list, targets: list, expected: torch.Tensor) -> None:
    """Runs in each of 2 processes: shard without padding, reduce once, compare with the 1-process matrix."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the fork may carry the parent's 1-process state
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    cm = ConfusionMatrix(expected.shape[0], device=accelerator.device)
    for i in range(accelerator.process_index, len(preds), accelerator.num_processes):
        cm.update(preds[i], targets[i])
    local = cm.matrix.clone()
    total = cm.reduce(accelerator)
    assert torch.equal(total, expected), (total, expected)
    assert torch.equal(cm.matrix, local)  # reduce does not modify the local counts


def test_two_process_reduce_counts_each_sample_once() -> None:
    launchers = pytest.importorskip("accelerate.launchers")
    samples = [random_batch(s, 5, shape=(1, 6, 7)) for s in range(5)]  # odd count: shards of 3 and 2
    preds, targets = [p for p, _ in samples], [t for _, t in samples]
    full = ConfusionMatrix(5)
    for p, t in samples:
        full.update(p, t)
    launchers.debug_launcher(_two_process_worker, args=(preds, targets, full.matrix.clone()), num_processes=2)
