"""``unimatch``: the loss against a hand computation from the recorded forwards, distinct CutMix partners per strong
view, the feature-perturbation stream's gradient path, UniMatch V2's complementary dropout, and exact resume with
the EMA teacher in engine runs on the toy data."""

import pytest
import torch
import torch.nn.functional as F

from dasuite.engine.loop import Trainer
from dasuite.errors import ConfigError
from dasuite.methods import unimatch
from dasuite.methods.unimatch import channel_dropout, complementary_dropout, partner_shifts
from dasuite.models import create_model
from tests.conftest import resumed_teacher_matches_uninterrupted
from tests.test_method_contract import method_config

NO_STRONG = {"policy": None, "color_jitter": None, "grayscale": 0.0, "blur": 0.0}
V2 = {"method.teacher": "ema", "method.momentum": 0.996, "method.strong_weight": 0.5, "method.fp_weight": 0.0,
      "method.comp_drop": True, "method.partners": "flip"}


def _config(tmp_path, extra=None, max_iters=2, batch=2):
    values = {"train.batch_size": batch, "model.options": {"drop_path": 0.0, "dropout": 0.0}, **(extra or {})}
    return method_config(tmp_path, "unimatch", values, max_iters=max_iters)


def _record(model):
    """Forward hook recording (input images, logits) of every call of ``model``."""
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append((args[0].detach(), out.detach())))
    return calls


def _ce(logits, labels, weights):
    """sum_p w_p CE_p / P, written out: bilinear upsampling to the labels, log-softmax, gather."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    logp = logits.log_softmax(1).gather(1, labels.clamp(0).unsqueeze(1)).squeeze(1)
    return (-logp * weights * (labels != 255)).sum() / labels.numel()


def _box_and_partner(mixed, weak, i):
    """The pasted box of strong view image ``i`` and the weak image it was pasted from (no photometric change)."""
    box = (mixed[i] - weak[i]).abs().amax(0) > 1e-4
    if not box.any():
        return box, i
    sources = [j for j in range(weak.shape[0]) if (mixed[i][:, box] - weak[j][:, box]).abs().max() < 1e-4]
    assert len(sources) == 1
    return box, sources[0]


def test_loss_is_the_weighted_sum_of_hand_computed_terms(tmp_path):
    cfg = _config(tmp_path, {"method.strong": NO_STRONG, "method.cutmix": {"p": 1.0}, "method.threshold": 0.06,
                             "method.fp_weight": 0.7, "method.strong_weight": 0.3, "method.loss_scale": 0.4},
                  batch=4)
    trainer = Trainer(cfg)
    method = trainer.method
    calls = _record(method.model)
    batches = trainer._next_batches()
    source, target = batches["source"], batches["target"]
    torch.manual_seed(3)
    out = method.training_step(batches, 0)
    (joint_in, joint), (strong_in, strong) = calls
    n, u = source["image"].shape[0], target["image"].shape[0]
    assert torch.equal(joint_in, torch.cat((source["image"], target["image"])))
    assert joint.shape[0] == n + 2 * u and strong.shape[0] == 2 * u  # the fp rows appended to the joint forward
    probs = F.interpolate(joint[n:n + u], size=target["image"].shape[-2:], mode="bilinear",
                          align_corners=False).softmax(1)
    confidence, pseudo = probs.max(1)
    kept = (confidence >= 0.06).float()
    kept[:, :2] = 0  # toy_overrides' pseudo_ignore rows: top 2, bottom 6
    kept[:, -6:] = 0
    assert 0 < kept.mean() < 1
    loss_x = F.cross_entropy(F.interpolate(joint[:n], size=source["label"].shape[-2:], mode="bilinear",
                                           align_corners=False), source["label"], ignore_index=255)
    loss_fp = _ce(joint[n + u:], pseudo, kept)
    strong_terms, partners = [], []
    for view, logits in zip(strong_in.chunk(2), strong.chunk(2)):
        labels, weights, seen = pseudo.clone(), kept.clone(), []
        for i in range(u):
            box, j = _box_and_partner(view, target["image"], i)
            assert box.any() and j != i  # p = 1: every image gets a box from another image
            labels[i][box], weights[i][box] = pseudo[j][box], kept[j][box]
            seen.append(j)
        partners.append(seen)
        strong_terms.append(_ce(logits, labels, weights))
    assert all(a != b for a, b in zip(*partners))  # B = 4: distinct partners per view, for every image
    for name, value in (("loss_seg", loss_x), ("loss_fp", loss_fp), ("loss_strong1", strong_terms[0]),
                        ("loss_strong2", strong_terms[1])):
        assert out[name].item() == pytest.approx(value.item(), rel=1e-4), name
    expected = 0.4 * (loss_x + 0.3 * (strong_terms[0] + strong_terms[1]) + 0.7 * loss_fp)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_partner_shifts_are_distinct_and_never_the_image_itself():
    torch.manual_seed(0)
    for batch in (3, 4, 7):
        for _ in range(50):
            first, second = partner_shifts(batch, "distinct")
            assert 1 <= first < batch and 1 <= second < batch and first != second
    assert partner_shifts(2, "distinct") == (1, 1) and partner_shifts(5, "flip") == (None, None)
    x = torch.arange(4)
    assert unimatch.partner_of(x, 1).tolist() == [1, 2, 3, 0] and unimatch.partner_of(x, None).tolist() == [3, 2, 1, 0]


def test_fp_stream_reaches_the_gradient_through_the_decoder_from_the_perturbed_features_only():
    torch.manual_seed(0)
    model = create_model("segformer_b0", 5, tiny=True, drop_path=0.0, dropout=0.0).eval()  # no batch coupling
    n, u = 2, 3
    images = torch.randn(n + u, 3, 32, 32)
    stages_seen, perturbed_seen = [], []
    perturb = channel_dropout(n, 0.5)

    def recording(stages):
        for s in stages:
            s.retain_grad()
        stages_seen.extend(stages)
        out = perturb(stages)
        for s in out:
            s.retain_grad()
        perturbed_seen.extend(out)
        return out

    logits = model(images, perturb=recording)
    assert logits.shape[0] == n + 2 * u
    clean = model(images)
    assert torch.allclose(logits[: n + u], clean, atol=1e-5)  # the clean rows are the plain forward
    labels = torch.randint(0, 5, (u, *logits.shape[-2:]))
    F.cross_entropy(logits[n + u:], labels).backward()  # L_fp alone
    for stage, perturbed in zip(stages_seen, perturbed_seen):
        fp = perturbed[n + u:]
        dropped = fp.abs().amax((2, 3)) == 0  # u x C: channels Dropout2d zeroed
        kept = ~dropped
        assert dropped.any() and kept.any()
        assert torch.allclose(fp[kept], 2.0 * stage[n:][kept])  # kept channels scaled by 1 / (1 - p)
        assert torch.count_nonzero(perturbed.grad[: n + u]) == 0  # the decoder's clean inputs: untouched by L_fp
        assert torch.count_nonzero(perturbed.grad[n + u:]) > 0
        assert torch.count_nonzero(stage.grad[:n]) == 0  # labelled rows: untouched by L_fp
    last, last_fp = stages_seen[-1], perturbed_seen[-1][n + u:]
    dropped = last_fp.abs().amax((2, 3)) == 0  # the last stage feeds nothing but the decoder:
    weak = last.grad[n:]
    assert torch.count_nonzero(weak[dropped]) == 0 and torch.count_nonzero(weak[~dropped]) > 0  # kept channels only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in model.named_parameters()
               if name.startswith("segformer.") and p.requires_grad)  # through the kept channels into the encoder
    decoder = [p for name, p in model.named_parameters() if name.startswith("decode_head.")]
    assert all(p.grad is not None for p in decoder)


def test_complementary_dropout_masks():
    torch.manual_seed(1)
    half = 8
    stages = [torch.ones(2 * half, 6, 2, 2), torch.ones(2 * half, 4, 3, 3), torch.ones(2 * half, 6, 2, 2)]
    out = complementary_dropout(stages)
    masks = [o[:, :, 0, 0] for o in out]
    for m in masks:
        assert torch.equal(m[:half] + m[half:], torch.full_like(m[:half], 2.0))  # complementary per image
        whole = (m[:half] == 1).all(1)
        assert whole.sum() == half // 2  # a random half of the images is kept whole
        assert set(m[:half][~whole].unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(masks[0], masks[2])  # one draw per width: DINOv2's equal-width read-outs share it


def test_unimatch_v2_resumes_exactly_with_its_ema_teacher(tmp_path, monkeypatch):
    full_cfg, cfg = _config(tmp_path / "full", V2, max_iters=6), _config(tmp_path / "cut", V2, max_iters=6)
    resumed_teacher_matches_uninterrupted(full_cfg, cfg, unimatch.UniMatch, monkeypatch)


def test_v2_strong_forward_is_perturbed_and_the_teacher_labels(tmp_path):
    trainer = Trainer(_config(tmp_path, {**V2, "method.strong": NO_STRONG}))
    method = trainer.method
    calls = _record(method.model)
    teacher_calls = _record(method.ema.module)
    batches = trainer._next_batches()
    torch.manual_seed(0)
    method.training_step(batches, 0)
    assert [c[0].shape[0] for c in calls] == [2, 4]  # labelled alone, then both strong views (no fp stream)
    assert len(teacher_calls) == 1 and torch.equal(teacher_calls[0][0], batches["target"]["image"])
    method.model.eval()
    plain = method.model(calls[1][0])
    assert not torch.allclose(plain, calls[1][1], atol=1e-4)  # comp_drop changed the strong predictions


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="eval_teacher"):
        Trainer(_config(tmp_path, {"method.eval_teacher": True}))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["{name: unimatch, threshold: 0.0}",
                                    "{name: unimatch, threshold: 0.0, teacher: ema, fp_weight: 0.0, comp_drop: true}"])
def test_two_processes_then_resumed_on_one(tmp_path, method):
    """``torchrun --nproc_per_node 2`` trains UniMatch (global batch 4 per role = 2 x 2) and the run continues on one
    process with the same global batch."""
    import math

    from tests.conftest import ROOT, TWO_PROCESS_RUN, two_processes_then_one

    base = [str(ROOT / "experiments" / "toy" / "source_only.yaml"), f"work_dir={tmp_path}", f"method={method}",
            "data.target={name: toy, domain: real, split: train, size: [64, 48], num_images: 8, "
            "augment: {crop: [48, 48]}}", "data.source.augment.crop=[48,48]", *TWO_PROCESS_RUN]
    out = two_processes_then_one(base, tmp_path / "toy_source_only" / "seed0")
    assert math.isfinite(out["summary"]["final"]["mIoU"])
