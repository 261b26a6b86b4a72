"""DINOv2 segmenters (``dinov2_vit*14``): the input-size rule, both heads' features, full-size configs, offline
weights (torch-hub and Hugging Face layouts), layer-wise lr decay, checkpointing, and training through the method
families. The generic model contract (shapes at 90x60, gradients, determinism, head prefixes) is in
tests/test_models.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Dinov2Model

from dasuite.config.schema import OptimConfig
from dasuite.engine.optim import build_optimizer, param_groups
from dasuite.errors import ConfigError, DasuiteError
from dasuite.models import create_model
from dasuite.models.dinov2 import SPECS, TINY_SPECS, dinov2_config, resample
from tests.conftest import tiny_toy_config

K = 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- input sizes and features ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["dpt", "linear"])
@pytest.mark.parametrize("size", [(50, 70), (64, 48), (56, 42)])
def test_any_size_gives_contract_shapes(head: str, size: tuple[int, int]) -> None:
    model = create_model("dinov2_vitb14", K, tiny=True, head=head).eval()
    height, width = size
    with torch.no_grad():
        logits, features = model(torch.randn(2, 3, height, width), return_features=True)
    stride = model.output_stride
    assert stride == {"dpt": 4, "linear": 16}[head]
    assert logits.shape == (2, K, math.ceil(height / stride), math.ceil(width / stride))
    for i, s in enumerate((4, 8, 16, 32)):
        channels = model.feature_channels[f"stage{i + 1}"]
        assert features[f"stage{i + 1}"].shape == (2, channels, math.ceil(height / s), math.ceil(width / s))
    assert features["decoder"].shape == (2, model.feature_channels["decoder"], *logits.shape[-2:])


def test_padding_leaves_the_image_tokens_of_a_multiple_of_14_alone() -> None:
    """A 50x40 image is zero-padded at the bottom and right to 56x42 (4x3 patches), not resized: its tokens equal
    those of the explicitly padded image."""
    model = create_model("dinov2_vits14", K, tiny=True).eval()
    image = torch.randn(1, 3, 50, 40)
    padded = torch.nn.functional.pad(image, (0, 2, 0, 6))
    with torch.no_grad():
        for a, b in zip(model.encode(image), model.encode(padded)):
            assert a.shape == (1, 24, 4, 3)
            torch.testing.assert_close(a, b)


def test_intermediate_layers_are_transformers_hidden_states_after_the_final_norm() -> None:
    model = create_model("dinov2_vitb14", K, tiny=True).eval()
    images = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        hidden = model.dinov2(images, output_hidden_states=True).hidden_states  # embeddings, then each block
        for layer, grid in zip(model.layers, model.encode(images)):
            tokens = model.dinov2.layernorm(hidden[layer + 1])[:, 1:]
            torch.testing.assert_close(grid, tokens.transpose(1, 2).reshape(2, -1, 3, 4))


def test_resample_places_cells_at_their_pixel_centres() -> None:
    """A map of x-coordinates (cell centres of a 14-px grid) resampled to stride 4 gives the output cell centres."""
    grid = (torch.arange(6.0) * 14 + 7).expand(1, 1, 3, 6)
    out = resample(grid, 14, 7, (3, 21), 4)
    centres = torch.arange(21.0) * 4 + 2
    inside = (centres >= 7) & (centres <= 77)  # beyond the first/last centre: border value
    torch.testing.assert_close(out[0, 0, 0, inside], centres[inside])
    assert out[0, 0, 0, 0] == 7 and out[0, 0, 0, -1] == 77


def test_linear_head_is_batchnorm_and_1x1_conv_on_the_last_layer() -> None:
    """The last layer equals transformers' own forward (final LayerNorm); logits = the probe's logits on the patch
    grid, resampled to stride 16 (resampling is linear, so it commutes with the 1x1 conv)."""
    model = create_model("dinov2_vits14", K, tiny=True, head="linear", dropout=0.0).eval()
    images = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        logits = model(images)
        tokens = model.dinov2(images).last_hidden_state[:, 1:]  # transformers' own forward
        grid = tokens.transpose(1, 2).reshape(2, -1, 4, 5)
        torch.testing.assert_close(model.encode(images)[-1], grid)
        probe = model.decode_head.classifier(model.decode_head.batch_norm(grid))
    torch.testing.assert_close(logits, resample(probe, 14, 7, (4, 5), 16), rtol=1e-5, atol=1e-6)


def test_full_size_configs_are_the_released_models() -> None:
    official = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
    for variant, (hidden, depth, heads) in official.items():
        config = dinov2_config(SPECS[variant])
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (hidden, depth, heads)
        assert config.patch_size == 14 and config.image_size == 518 and config.use_swiglu_ffn == (variant == "g")
        assert max(SPECS[variant].layers) == depth - 1
    with torch.device("meta"):
        model = create_model("dinov2_vitb14", 19)
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("dinov2.")) / 1e6
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decode_head.")) / 1e6
    assert 86.4 < encoder < 86.7 and 10.5 < head < 10.8  # DINOv2 ViT-B/14: 86M; Depth Anything V2-B: 97.5M in all
    assert model.feature_channels == {"stage1": 96, "stage2": 192, "stage3": 384, "stage4": 768, "decoder": 128}


def test_options_and_errors() -> None:
    model = create_model("dinov2_vitl14", K, tiny=True, drop_path=0.2, dropout=0.3)
    assert model.dinov2.config.drop_path_rate == 0.2 and model.decode_head.dropout.p == 0.3
    with pytest.raises(ConfigError, match="head must be one of dpt, linear, got 'mlp'"):
        create_model("dinov2_vits14", K, tiny=True, head="mlp")
    with pytest.raises(ConfigError, match=r"drop_path must be in \[0, 1\), got 1.0"):
        create_model("dinov2_vits14", K, tiny=True, drop_path=1.0)


# --- offline weights ------------------------------------------------------------------------------------------------
def _hf_directory(tmp_path: Path, variant: str = "b") -> tuple[Path, Dinov2Model]:
    """A fabricated ``facebook/dinov2-*`` snapshot: config.json + model.safetensors in the hub's (legacy) naming."""
    reference = Dinov2Model(dinov2_config(TINY_SPECS[variant], tiny=True))
    folder = tmp_path / "dinov2-base"
    reference.save_pretrained(folder)
    return folder, reference


def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {k[len("dinov2."):]: v for k, v in model.state_dict().items() if k.startswith("dinov2.")}


def test_loads_a_hugging_face_directory_and_the_dinov2_keyword(tmp_path, monkeypatch) -> None:
    folder, reference = _hf_directory(tmp_path)
    from safetensors.torch import load_file

    assert any(".attention.attention.query." in k for k in load_file(str(folder / "model.safetensors")))
    want = reference.state_dict()
    model = create_model("dinov2_vitb14", K, tiny=True, pretrained=str(folder))
    got = _encoder_state(model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    folder.rename(hub / "dinov2-base")  # a snapshot folder in the hub cache, named after the repo
    model = create_model("dinov2_vitb14", K, tiny=True, pretrained="dinov2")
    assert torch.equal(model.dinov2.embeddings.cls_token, reference.embeddings.cls_token)


def _to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Installed-transformers Dinov2Model state -> facebookresearch/dinov2 naming (fused qkv and SwiGLU w12)."""
    renames = [(r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.position_embeddings$", "pos_embed"),
               (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
               (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."), (r"^layernorm\.", "norm."),
               (r"\.attention\.o_proj\.", ".attn.proj."), (r"\.layer_scale(\d)\.lambda1$", r".ls\1.gamma"),
               (r"\.mlp\.down_proj\.", ".mlp.w3.")]
    out, fused = {}, {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if match := re.match(r"^(.+)\.attention\.([qkv])_proj\.(\w+)$", key):
            fused.setdefault(f"{match[1]}.attn.qkv.{match[3]}", {})["qkv".index(match[2])] = value
        elif match := re.match(r"^(.+)\.mlp\.(gate|up)_proj\.(\w+)$", key):
            fused.setdefault(f"{match[1]}.mlp.w12.{match[3]}", {})[["gate", "up"].index(match[2])] = value
        else:
            out[key] = value
    out.update({k: torch.cat([parts[i] for i in sorted(parts)]) for k, parts in fused.items()})
    return out


@pytest.mark.parametrize("arch", ["dinov2_vits14", "dinov2_vitg14"])  # g: SwiGLU
def test_loads_the_torch_hub_checkpoint(tmp_path, monkeypatch, arch) -> None:
    source = create_model(arch, K, tiny=True)
    original = _to_original(_encoder_state(source))
    assert "blocks.0.attn.qkv.weight" in original and "pos_embed" in original
    assert ("blocks.0.mlp.w12.weight" in original) == (arch == "dinov2_vitg14")
    original["mask_token"] = torch.zeros(1, source.dinov2.config.hidden_size)
    name = f"{arch}_pretrain.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(original, tmp_path / "hub" / "checkpoints" / name)
    for spec in (str(tmp_path / "hub" / "checkpoints" / name), "dinov2"):
        model = create_model(arch, K, tiny=True, pretrained=spec)
        got, want = _encoder_state(model), _encoder_state(source)
        assert all(torch.equal(got[k], want[k]) for k in want)
    images = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        for a, b in zip(model.eval().encode(images), source.eval().encode(images)):
            assert torch.equal(a, b)


def test_missing_weights_name_the_repo_and_the_place(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DasuiteError, match=r"dinov2_vitl14_pretrain.pth, dinov2-large found in .*hub/checkpoints.*"
                                           r"facebook/dinov2-large \(config.json \+ model.safetensors\)") as err:
        create_model("dinov2_vitl14", K, tiny=True, pretrained="dinov2")
    assert "\n" not in str(err.value)
    with pytest.raises(DasuiteError, match=r"nowhere not found.*facebook/dinov2-small"):
        create_model("dinov2_vits14", K, tiny=True, pretrained=str(tmp_path / "nowhere"))
    folder, _ = _hf_directory(tmp_path)  # tiny ViT-B weights into tiny ViT-L: shapes differ
    with pytest.raises(DasuiteError, match="wrong shape"):
        create_model("dinov2_vitl14", K, tiny=True, pretrained=str(folder))


def test_run_planning_names_the_dinov2_files(tmp_path, monkeypatch) -> None:
    from dasuite.models.weight_files import keyword_files, missing_keyword_file, missing_weights_message

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert keyword_files("dinov2_vitg14", {}, "dinov2") == ("dinov2_vitg14_pretrain.pth", "dinov2-giant")
    assert keyword_files("dinov2_vitg14", {}, "imagenet") is None
    line = missing_keyword_file("exp", "dinov2_vitb14", {}, "dinov2")
    assert re.search(r"needs dinov2_vitb14_pretrain.pth \(or dinov2-base\) in .*hub/checkpoints/.*facebook/dinov2-base",
                     line)
    assert "model.pretrained=dinov2" in missing_weights_message("exp", "dinov2_vits14")
    (tmp_path / "hub" / "checkpoints" / "dinov2-base").mkdir(parents=True)  # a snapshot folder is enough
    assert missing_keyword_file("exp", "dinov2_vitb14", {}, "dinov2") is None


# --- layer-wise lr decay --------------------------------------------------------------------------------------------
def test_layer_decay_groups_match_a_hand_computation() -> None:
    model = create_model("dinov2_vits14", K, tiny=True)  # 4 blocks
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05, head_lr_mult=10, norm_weight_decay=0.0, layer_decay=0.5)
    groups = param_groups(model, cfg, model.head_prefixes)
    by_param = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(by_param) == len(params)

    def lr(name: str) -> float:
        return by_param[id(params[name])]["lr"]

    assert lr("dinov2.embeddings.patch_embeddings.projection.weight") == pytest.approx(1e-3 * 0.5 ** 5)
    assert lr("dinov2.embeddings.cls_token") == pytest.approx(1e-3 * 0.5 ** 5)
    for block in range(4):  # block i of N = 4: lr * d ** (N - i)
        assert lr(f"dinov2.encoder.layer.{block}.attention.q_proj.weight") == pytest.approx(1e-3 * 0.5 ** (4 - block))
        assert lr(f"dinov2.encoder.layer.{block}.norm1.weight") == pytest.approx(1e-3 * 0.5 ** (4 - block))
    assert lr("dinov2.layernorm.weight") == pytest.approx(1e-3)
    assert lr("decode_head.classifier.weight") == lr("decode_head.batch_norm.weight") == pytest.approx(1e-2)
    decay = {n: by_param[id(p)]["weight_decay"] for n, p in params.items()}
    assert decay["dinov2.encoder.layer.2.norm2.bias"] == 0.0 and decay["dinov2.embeddings.position_embeddings"] == 0.0
    assert decay["dinov2.encoder.layer.2.mlp.fc1.weight"] == 0.05 and decay["decode_head.batch_norm.weight"] == 0.05
    names = [g["group"] for g in groups]
    assert len(names) == len(set(names)) and "body_layer0" in names and "body_norm_layer3" in names


def test_layer_decay_is_refused_by_models_without_layers() -> None:
    model = create_model("segformer_b0", K, tiny=True)
    with pytest.raises(ConfigError, match=r"optim.layer_decay=0.9: SegFormer does not number its layers"):
        build_optimizer(model, OptimConfig(layer_decay=0.9), model.head_prefixes)
    assert len(build_optimizer(model, OptimConfig(), model.head_prefixes).param_groups) == 3


# --- activation checkpointing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["dpt", "linear"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(head: str) -> None:
    model = create_model("dinov2_vitb14", K, tiny=True, head=head, drop_path=0.1).train()
    images, labels = torch.randn(2, 3, 42, 56), torch.randint(0, K, (2, 42, 56))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same drop-path and dropout draws
        logits = torch.nn.functional.interpolate(model(images), size=(42, 56), mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = run()
    model.set_grad_checkpointing(True)
    assert all(layer.gradient_checkpointing for layer in model.dinov2.encoder.layer)
    ckpt_loss, ckpt = run()
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=1e-6)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    model.set_grad_checkpointing(False)
    assert not any(layer.gradient_checkpointing for layer in model.dinov2.encoder.layer)


# --- training through the method families ---------------------------------------------------------------------------
TINY_DINOV2 = ["model.arch=dinov2_vits14", "model.tiny=true", "log.tensorboard=false", "data.test=null"]
TARGET = ["data.target.size=[64,48]", "data.target.num_images=16", "data.target.augment.crop=[48,48]"]
UNLABELLED = "data.target={name: toy, domain: real, split: train, size: [64, 48], num_images: 16, augment: {crop: [48, 48]}}"
FAMILIES = {  # experiment, overrides, losses every step must log
    "source_only": ("source_only.yaml", [], {"loss_seg"}),
    "mean_teacher_mic": ("cutmix_pseudo.yaml", [*TARGET, "method.threshold=0.0", "method.masking={patch: 14}"],
                         {"loss_seg", "loss_unlabelled", "loss_masked"}),
    "adaptsegnet": ("adaptsegnet.yaml", TARGET, {"loss_seg", "loss_adv_main"}),
    "unimatch": ("source_only.yaml", [UNLABELLED, "method={name: unimatch, threshold: 0.0}"],
                 {"loss_seg", "loss_strong1", "loss_strong2", "loss_fp"}),
    "unimatch_v2": ("source_only.yaml", [UNLABELLED, "method={name: unimatch, threshold: 0.0, teacher: ema, "
                    "strong_weight: 0.5, fp_weight: 0.0, comp_drop: true, partners: flip}"],
                    {"loss_seg", "loss_strong1", "loss_strong2"}),
    "hrda_source_only": ("source_only.yaml", ["model.arch=hrda", "model.options={base: dinov2_vits14, detail_crop: "
                                              "[32, 32]}", "data.source.augment.crop=[64,64]"], {"loss_seg"}),
}


def _train_logging_losses(cfg, monkeypatch) -> tuple[dict, list[dict[str, float]], list]:
    """Train ``cfg``; its summary, the losses each training step returned, and the method object(s) that ran."""
    from dasuite.engine.loop import train
    from dasuite.methods import METHODS
    from dasuite.rundir import RunDir

    method_cls, logged, methods = METHODS.get(cfg.method.name), [], []
    step = method_cls.training_step

    def spy(self, batches, i):
        out = step(self, batches, i)
        logged.append({k: float(v.detach()) for k, v in out.items()})
        methods.append(self)
        return out

    monkeypatch.setattr(method_cls, "training_step", spy)
    train(cfg)
    return json.loads((RunDir.for_config(cfg).root / "summary.json").read_text()), logged, methods


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trains_through_the_method_families(family, tmp_path, monkeypatch) -> None:
    experiment, overrides, losses = FAMILIES[family]
    cfg = tiny_toy_config(tmp_path, *TINY_DINOV2, *overrides, max_iters=2, experiment=experiment)
    summary, logged, methods = _train_logging_losses(cfg, monkeypatch)
    assert summary["final"]["iteration"] == 2 and math.isfinite(summary["final"]["mIoU"])
    model = methods[0].accelerator.unwrap_model(methods[0].model)
    assert len(logged) == 2 and any(type(m).__name__ == "DINOv2Seg" for m in model.modules())
    for step in logged:
        assert losses <= set(step) and all(math.isfinite(v) for v in step.values())
        assert all(step[name] > 0 for name in losses)


def test_distills_a_dinov2_teacher_into_a_segformer_student(tmp_path, monkeypatch) -> None:
    teacher = create_model("dinov2_vits14", 19, tiny=True)
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    spec = {"checkpoint": str(tmp_path / "teacher.safetensors"), "arch": "dinov2_vits14", "tiny": True}
    cfg = tiny_toy_config(tmp_path, f"method.teacher={json.dumps(spec)}", "log.tensorboard=false", "data.test=null",
                          "method.cwd={weight: 1.0, pairs: [{student: stage3, teacher: stage3}]}", max_iters=2,
                          experiment="../kd/toy_b2_to_b0.yaml")
    assert cfg.model.arch == "segformer_b0"
    summary, logged, methods = _train_logging_losses(cfg, monkeypatch)
    assert summary["final"]["iteration"] == 2 and len(logged) == 2
    assert type(methods[0].teacher).__name__ == "DINOv2Seg"
    # KL on the logits, frequency KD on the decoders (teacher 16 ch, student 32: projector), CWD on stage3
    for step in logged:
        assert all(step[k] > 0 and math.isfinite(step[k]) for k in ("loss_kl", "loss_freq", "loss_cwd"))
