"""The shared ``feature_distance`` term (DAFormer's thing-class ImageNet feature distance): the label blocks, mask
and distance against hand computations, and the term inside a method: value, gradient (encoder only), weight 0,
the frozen network (encoder only, RNG untouched) and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from dasuite.config import load_config
from dasuite.errors import ConfigError, DasuiteError
from dasuite.losses.feature_distance import block_labels, class_mask, masked_feature_distance
from dasuite.methods import METHODS, Method
from dasuite.models import create_model
from tests.conftest import ROOT

I = 255
K = 19


# --- the math ------------------------------------------------------------------------------------------------------
def test_block_labels_majority_ratio_and_ignore() -> None:
    labels = torch.tensor([[
        [13, 13, 0, 0, I, I, 5, 5],
        [13, 11, 1, 2, I, 6, 5, 5],
    ]])  # 2x8 -> 1x4 blocks of 2x2: car 3/4, road 2/4, ignore 3/4, pole 4/4
    assert block_labels(labels, (1, 4), 0.75, K).tolist() == [[[13, I, I, 5]]]
    assert block_labels(labels, (1, 4), 0.5, K).tolist() == [[[13, 0, I, 5]]]  # ignore majority stays 255
    assert block_labels(labels, (1, 4), 1.0, K).tolist() == [[[I, I, I, 5]]]


def test_block_labels_pad_sizes_that_do_not_divide() -> None:
    labels = torch.full((1, 3, 3), 7)
    # 2x2 grid of ceil(3/2) = 2 pixel blocks; padding (255) fills 2/4, 2/4 and 3/4 of the last blocks
    assert block_labels(labels, (2, 2), 0.5, K).tolist() == [[[7, 7], [7, I]]]
    assert block_labels(labels, (2, 2), 0.75, K).tolist() == [[[7, I], [I, I]]]


def test_class_mask_selects_the_classes() -> None:
    labels = torch.tensor([[[13, 13, 0, 0], [13, 13, 0, 0]]])
    assert class_mask(labels, (1, 2), [11, 13], 0.75, K).tolist() == [[[True, False]]]
    assert class_mask(labels, (1, 2), None, 0.75, K).all()
    assert class_mask(torch.full((1, 2, 4), I), (1, 2), [11, 13], 0.0, K).sum() == 0


def test_masked_feature_distance_value_and_gradient() -> None:
    frozen = torch.zeros(1, 2, 1, 3)
    features = torch.tensor([[[[3.0, 1.0, 0.0]], [[4.0, 0.0, 6.0]]]], requires_grad=True)  # distances 5, 1, 6
    mask = torch.tensor([[[True, False, True]]])
    fd = masked_feature_distance(features, frozen, mask)
    assert fd.item() == pytest.approx((5 + 6) / 2)
    fd.backward()
    # d/dF mean_p ||F_p - G_p|| = (F_p - G_p) / ||F_p - G_p|| / N at masked pixels, 0 elsewhere
    want = torch.tensor([[[[3 / 5 / 2, 0.0, 0.0]], [[4 / 5 / 2, 0.0, 6 / 6 / 2]]]])
    torch.testing.assert_close(features.grad, want)


def test_masked_feature_distance_is_zero_without_pixels_or_difference() -> None:
    features = torch.randn(2, 3, 2, 2, requires_grad=True)
    empty = masked_feature_distance(features, torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and features.grad.abs().sum() == 0
    same = torch.randn(1, 3, 2, 2, requires_grad=True)
    fd = masked_feature_distance(same, same.detach().clone(), torch.ones(1, 2, 2, dtype=torch.bool))
    fd.backward()  # the first step of a run: the student still equals its ImageNet copy
    assert fd.item() == 0.0 and torch.isfinite(same.grad).all() and same.grad.abs().sum() == 0


# --- inside a method -------------------------------------------------------------------------------------------------
TINY = ["train.batch_size=2", "data.num_workers=0", "data.source.size=[64,64]", "data.source.num_images=4",
        "data.source.augment.crop=[64,64]", "model.options={drop_path: 0.0, dropout: 0.0}", "log.progress_bar=false"]


def _frozen_file(tmp_path: Path, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    path = tmp_path / "imagenet_b0.safetensors"
    save_file(create_model("segformer_b0", K, tiny=True).state_dict(), str(path))
    return path


def _config(tmp_path: Path, fd: dict | None, method: str = "source_only", extra: dict | None = None):
    values = {"work_dir": str(tmp_path / "runs"), "feature_distance": fd, "method": {"name": method}, **(extra or {})}
    return load_config(ROOT / "experiments" / "toy" / "source_only.yaml", TINY, values)


def _fd(tmp_path: Path, **options) -> dict:
    return {"weight": 0.5, "network": {"checkpoint": str(_frozen_file(tmp_path)), "arch": "segformer_b0",
                                       "tiny": True}, **options}


def _batch() -> dict:
    torch.manual_seed(11)
    label = torch.randint(0, K, (2, 64, 64))
    label[0, :32, :32] = 13  # one whole stride-32 block of car: a thing pixel of stage4 in image 0
    label[1, 32:, 32:] = 11  # and of person in image 1, 3/4 of its block
    label[1, 32:40, 32:64] = 2
    return {"image": torch.randn(2, 3, 64, 64), "label": label, "name": ["a", "b"]}


def _step(cfg, batch: dict) -> tuple[Method, dict]:
    torch.manual_seed(0)
    method = METHODS.get(cfg.method.name)(cfg, K)
    method.setup(Accelerator(cpu=True))
    method.model.train()
    return method, method.training_step({"source": batch}, 0)


def test_source_only_adds_the_weighted_distance_on_thing_blocks(tmp_path) -> None:
    batch = _batch()
    method, out = _step(_config(tmp_path, _fd(tmp_path)), batch)
    frozen = create_model("segformer_b0", K, tiny=True)
    frozen.load_state_dict(load_file(str(tmp_path / "imagenet_b0.safetensors")))
    with torch.no_grad():
        student = method.model(batch["image"], return_features=True)[1]["stage4"]  # 2 x 64 x 2 x 2
        imagenet = frozen.eval()(batch["image"], return_features=True)[1]["stage4"]
    distance = (student - imagenet).norm(dim=1)  # 2 x 2 x 2
    want = 0.5 * (distance[0, 0, 0] + distance[1, 1, 1]) / 2  # the two thing blocks only
    assert out["loss_fd"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_seg"].item() + out["loss_fd"].item(), rel=1e-6)
    assert not any(p.requires_grad for p in method.feature_distance.network.parameters())


def test_the_term_moves_encoder_gradients_only_and_weight_zero_is_off(tmp_path) -> None:
    batch = _batch()
    grads = {}
    for name, fd in (("off", None), ("zero", _fd(tmp_path, weight=0.0)), ("on", _fd(tmp_path, classes=None))):
        method, out = _step(_config(tmp_path, fd), batch)
        out["loss"].backward()
        grads[name] = (out, {n: p.grad.clone() for n, p in method.model.named_parameters()})
        if name == "zero":
            assert method.feature_distance is None and "loss_fd" not in out
    assert torch.equal(grads["off"][0]["loss"], grads["zero"][0]["loss"])
    assert all(torch.equal(grads["off"][1][n], g) for n, g in grads["zero"][1].items())
    assert grads["on"][0]["loss_fd"] > 0 and torch.equal(grads["on"][0]["loss_seg"], grads["off"][0]["loss_seg"])
    decoder = [n for n in grads["on"][1] if n.startswith("decode_head.")]
    assert decoder and all(torch.equal(grads["on"][1][n], grads["off"][1][n]) for n in decoder)
    last_stage = [n for n in grads["on"][1] if n.startswith("segformer.") and ".3." in n]
    assert any(not torch.allclose(grads["on"][1][n], grads["off"][1][n]) for n in last_stage)


def test_frozen_network_runs_its_encoder_only_and_draws_no_random_numbers(tmp_path, monkeypatch) -> None:
    cfg = _config(tmp_path, _fd(tmp_path))
    torch.manual_seed(0)
    plain = METHODS.get("source_only")(_config(tmp_path, None), K)
    after_plain = torch.random.get_rng_state()
    torch.manual_seed(0)
    method = METHODS.get("source_only")(cfg, K)
    assert torch.equal(torch.random.get_rng_state(), after_plain)  # the frozen copy's init is forked off
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), method.model.state_dict().values()))
    network = method.feature_distance.network
    assert not network.training
    monkeypatch.setattr(network, "decode", lambda *a: pytest.fail("the frozen decoder ran"))
    method.setup(Accelerator(cpu=True))
    method.training_step({"source": _batch()}, 0)


@pytest.mark.parametrize("method", ["minent", "distill"])
def test_other_methods_log_the_term(tmp_path, method) -> None:
    if method == "minent":
        extra = {"method.levels": ["main"], "data.target": {"name": "toy", "domain": "real", "split": "train",
                                                            "size": [64, 64], "num_images": 4}}
    else:
        extra = {"method.teacher": {"checkpoint": str(_frozen_file(tmp_path)), "arch": "segformer_b0", "tiny": True}}
    cfg = _config(tmp_path, _fd(tmp_path, classes=None), method, extra)
    torch.manual_seed(0)
    instance = METHODS.get(method)(cfg, K)
    instance.setup(Accelerator(cpu=True))
    batches = {"source": _batch(), "target": _batch()}
    out = instance.training_step(batches, 0)
    assert out["loss_fd"] > 0 and out["loss"] >= out["loss_fd"]


def test_errors_are_one_clear_line(tmp_path) -> None:
    missing = {"weight": 0.005, "network": {"checkpoint": str(tmp_path / "mit_b0_imagenet.safetensors"),
                                            "arch": "segformer_b0", "tiny": True}}
    with pytest.raises(DasuiteError) as err:
        METHODS.get("source_only")(_config(tmp_path, missing), K)
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "mit_b0_imagenet.safetensors") in text and "put the frozen" in text
    with pytest.raises(ConfigError, match="model.pretrained is null: set model.pretrained"):
        METHODS.get("source_only")(_config(tmp_path, {"weight": 0.005}), K)
    with pytest.raises(ConfigError, match="train ids must be below"):
        METHODS.get("source_only")(_config(tmp_path, _fd(tmp_path, classes=[6, 19])), K)
    with pytest.raises(ConfigError, match="feature_distance.feature='decoder'"):
        METHODS.get("source_only")(_config(tmp_path, _fd(tmp_path, feature="decoder")), K)
    with pytest.raises(ConfigError, match="classes"):
        _config(tmp_path, _fd(tmp_path, classes=[]))

    class OwnLoss(Method):  # a method that computes its source loss itself
        def training_step(self, batches, step):
            raise AssertionError

    with pytest.raises(ConfigError, match="does not compute the shared labelled-source losses"):
        OwnLoss(_config(tmp_path, _fd(tmp_path)), K)
