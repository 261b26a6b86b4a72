"""SegFormer (Xie et al., NeurIPS 2021): MiT-B0..B5 encoder + all-MLP decoder, on HuggingFace ``transformers``.

The network is ``transformers.SegformerForSemanticSegmentation`` built from a ``SegformerConfig`` (never fetched
from the hub); this module only runs its pieces in order so the named features are the very tensors the logits are
computed from (no hooks, one forward):

- ``stage1..stage4``: encoder stage outputs after the per-stage LayerNorm, Bx{C_i}x ceil(H/s)x ceil(W/s),
  s = 4, 8, 16, 32 (overlapping patch embeddings pad, so any H, W works; sizes are ceil-divided);
- ``decoder``: ReLU(BN(linear_fuse(concat of the 4 projected, upsampled stages))) at stride 4, i.e. the output of
  ``decode_head.activation`` and the input of ``decode_head.dropout`` (mmseg's ``linear_fuse`` output).

Logits = ``decode_head.classifier(decode_head.dropout(decoder))`` at stride 4, Bx K x ceil(H/4) x ceil(W/4).
``decoder: daformer`` replaces the all-MLP decoder by DAFormer's context-aware fusion decoder
(``dasuite.models.daformer_head``; ``decoder`` is then its bottleneck output, width 256, tiny: the variant's
decoder width); the encoder, the features ``stage1..4`` and the parameter prefixes stay the same.
Differences from NVlabs kept from transformers: element-wise ``nn.Dropout`` instead of ``Dropout2d``.
LayerNorm eps is set to the original values (1e-6 in blocks and stage norms, 1e-5 in patch embeddings and in the
key/value reduction) instead of transformers' uniform 1e-5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from dasuite.errors import ConfigError
from dasuite.models.base import MODELS, ModelOutput, Perturb, SegModel
from dasuite.models.checkpoint import checkpointed, wants_checkpoint
from dasuite.models.daformer_head import DAFormerHead
from dasuite.models.pretrained import CheckpointState, Converted, load_pretrained

BLOCK_LAYER_NORM_EPS = 1e-6  # NVlabs mit_bX: norm_layer=partial(nn.LayerNorm, eps=1e-6)
DECODERS = ("mlp", "daformer")
DAFORMER_CHANNELS = 256  # DAFormer's embedding and fusion width (configs/_base_/models/daformer_*_mitb5.py)

#: the pretrained files per arch and keyword (read by dasuite.models.weight_files without importing this module)
PRETRAINED_FILES = {
    "files": [
        {"name": "mit_b0.pth",
         "what": "MiT-B0 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b0"},
        {"name": "mit_b1.pth",
         "what": "MiT-B1 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b1"},
        {"name": "mit_b2.pth",
         "what": "MiT-B2 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b2"},
        {"name": "mit_b3.pth",
         "what": "MiT-B3 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b3"},
        {"name": "mit_b4.pth",
         "what": "MiT-B4 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b4"},
        {"name": "mit_b5.pth",
         "what": "MiT-B5 encoder, ImageNet-1k",
         "source": "the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the "
                   "Hugging Face model nvidia/mit-b5"},
    ],
    "archs": {
        "segformer_b0": {"imagenet": ("mit_b0.pth",)},
        "segformer_b1": {"imagenet": ("mit_b1.pth",)},
        "segformer_b2": {"imagenet": ("mit_b2.pth",)},
        "segformer_b3": {"imagenet": ("mit_b3.pth",)},
        "segformer_b4": {"imagenet": ("mit_b4.pth",)},
        "segformer_b5": {"imagenet": ("mit_b5.pth",)},
    },
}


@dataclass(frozen=True)
class MiTSpec:
    """Encoder depths / widths / heads per stage and the decoder width of one SegFormer variant."""

    depths: tuple[int, int, int, int]
    hidden_sizes: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    decoder_dim: int


_B0_WIDTHS = (32, 64, 160, 256)
_WIDTHS = (64, 128, 320, 512)
_HEADS = (1, 2, 5, 8)
MIT_SPECS: dict[str, MiTSpec] = {
    "b0": MiTSpec((2, 2, 2, 2), _B0_WIDTHS, _HEADS, 256),
    "b1": MiTSpec((2, 2, 2, 2), _WIDTHS, _HEADS, 256),
    "b2": MiTSpec((3, 4, 6, 3), _WIDTHS, _HEADS, 768),
    "b3": MiTSpec((3, 4, 18, 3), _WIDTHS, _HEADS, 768),
    "b4": MiTSpec((3, 8, 27, 3), _WIDTHS, _HEADS, 768),
    "b5": MiTSpec((3, 6, 40, 3), _WIDTHS, _HEADS, 768),
}
# tiny (tests, CPU runs): depth 1 per stage; B0 narrower than B1-B5 and B2-B5 with a wider decoder, as in the
# full family, so teacher/student pairs of tiny models still differ in channel counts.
_TINY_HEADS = (1, 2, 4, 8)
TINY_MIT_SPECS: dict[str, MiTSpec] = {
    "b0": MiTSpec((1, 1, 1, 1), (8, 16, 32, 64), _TINY_HEADS, 32),
    "b1": MiTSpec((1, 1, 1, 1), (16, 32, 64, 128), _TINY_HEADS, 32),
    **{v: MiTSpec((1, 1, 1, 1), (16, 32, 64, 128), _TINY_HEADS, 64) for v in ("b2", "b3", "b4", "b5")},
}
SR_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
MLP_RATIOS = (4, 4, 4, 4)


def segformer_config(spec: MiTSpec, num_classes: int, *, drop_path: float, dropout: float) -> SegformerConfig:
    """The transformers config of one variant (official sr ratios, patch sizes/strides, mlp ratio 4, GELU)."""
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(spec.depths),
        sr_ratios=list(SR_RATIOS),
        hidden_sizes=list(spec.hidden_sizes),
        patch_sizes=list(PATCH_SIZES),
        strides=list(PATCH_STRIDES),
        num_attention_heads=list(spec.num_heads),
        mlp_ratios=list(MLP_RATIOS),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=dropout,
        drop_path_rate=drop_path,
        layer_norm_eps=BLOCK_LAYER_NORM_EPS,
        decoder_hidden_size=spec.decoder_dim,
        num_labels=num_classes,
        semantic_loss_ignore_index=255,
    )


class SegFormer(SegModel):
    """SegFormer with named features; parameter names are transformers' (``segformer.*``, ``decode_head.*``)."""

    output_stride = 4
    head_prefixes = ("decode_head.",)  # whole decode head (incl. decode_head.batch_norm) gets the head lr
    encoder_prefix = "segformer."
    classifier_prefix = "decode_head.classifier."
    #: checkpoint through transformers when its layers support it (False: dasuite's own block checkpointing)
    use_transformers_checkpointing = True
    _own_checkpointing = False

    def __init__(self, config: SegformerConfig, decoder: str = "mlp") -> None:
        """``decoder``: ``mlp`` (transformers' all-MLP head, width ``config.decoder_hidden_size``) or ``daformer``
        (``DAFormerHead`` of that width, dropout ``config.classifier_dropout_prob``)."""
        super().__init__()
        if decoder not in DECODERS:
            raise ConfigError(f"model option decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        network = SegformerForSemanticSegmentation(config)
        self.segformer = network.segformer
        self.decoder_kind = decoder
        if decoder == "daformer":
            self.decode_head: nn.Module = DAFormerHead(config.hidden_sizes, config.num_labels,
                                                       config.decoder_hidden_size, config.classifier_dropout_prob)
        else:
            self.decode_head = network.decode_head
        self.hf_config = config
        for name, module in self.segformer.named_modules():
            if isinstance(module, nn.LayerNorm) and "patch_embeddings" not in name and ".attention." not in name:
                module.eps = config.layer_norm_eps
        self.feature_channels = {f"stage{i + 1}": c for i, c in enumerate(config.hidden_sizes)}
        self.feature_channels["decoder"] = config.decoder_hidden_size

    @property
    def classifier(self) -> nn.Conv2d:
        """The final 1x1 conv: logits = classifier(dropout(features['decoder']))."""
        return self.decode_head.classifier

    def _projections(self) -> nn.ModuleList:
        head = self.decode_head  # transformers >= 5 names the per-stage Linears linear_projections, 4.x linear_c
        return head.linear_projections if hasattr(head, "linear_projections") else head.linear_c

    def decode(self, stages: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Stage features -> decoder feature Bx D x H1 x W1 (H1, W1 = stage1 size); mirrors SegformerDecodeHead
        (``DAFormerHead.features`` with ``decoder: daformer``)."""
        if self.decoder_kind == "daformer":
            return self.decode_head.features(stages)
        # fuse(cat_i up(P_i x_i)) = sum_i up(W_i P_i x_i), W_i the fuse weight's input block of stage i (the concat
        # runs stage 4 first): 1x1 convolution and bilinear upsampling are both linear and commute, so each stage is
        # fused at its own resolution and only one D-channel map at 1/4 resolution is accumulated, instead of the
        # 4D-channel concatenation (3.2 GB for MiT-B5 at 2048x1024) that the fuse conv would also save for backward.
        head = self.decode_head
        size = stages[0].shape[-2:]
        blocks = head.linear_fuse.weight.flatten(1).chunk(len(stages), dim=1)  # D x D each, stage 4 first
        fused: Optional[torch.Tensor] = None
        for stage, projection, block in zip(stages[::-1], list(self._projections())[::-1], blocks):
            tokens = F.linear(projection(stage), block)  # B x (h*w) x D
            grid = tokens.transpose(1, 2).reshape(stage.shape[0], -1, *stage.shape[-2:])
            if grid.shape[-2:] != size:
                grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            # in place into the first (stage 4's, a fresh upsampled map): no saved tensor is overwritten
            fused = grid if fused is None else fused.add_(grid)
        if head.linear_fuse.bias is not None:
            fused = fused + head.linear_fuse.bias[:, None, None]
        return head.activation(head.batch_norm(fused))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint every encoder block (``SegformerLayer``) in training (``train.grad_checkpointing``).

        Through transformers' own gradient checkpointing when its SegFormer layers support it (non-reentrant
        ``torch.utils.checkpoint``); otherwise ``encode`` runs each block through ``dasuite.models.checkpoint``.
        The patch embeddings, stage norms and the decoder are not checkpointed."""
        native = self.use_transformers_checkpointing and getattr(
            self.segformer, "supports_gradient_checkpointing", False) and any(
            hasattr(m, "gradient_checkpointing") for m in self.segformer.modules() if m is not self.segformer)
        self._own_checkpointing = enabled and not native
        encoder = self.segformer
        if native and enabled and hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5.x names
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif native and enabled:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif native:
            (getattr(encoder, "activation_checkpointing_disable", None) or encoder.gradient_checkpointing_disable)()
        if self._own_checkpointing and not hasattr(self.segformer, "stages"):
            raise ConfigError("train.grad_checkpointing: this transformers version's SegFormer has neither gradient "
                              "checkpointing nor the stages list dasuite can checkpoint; upgrade transformers")

    def _stage_checkpointed(self, stage: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``stage(hidden)`` (transformers >= 5 ``SegformerStage``) with each block checkpointed."""
        hidden, height, width = stage.patch_embeddings(hidden)
        for block in stage.blocks:
            hidden = checkpointed(block, hidden, height, width)
        hidden = stage.layer_norm(hidden)
        if stage.reshape:
            hidden = hidden.reshape(hidden.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()
        return hidden

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The 4 stage outputs Bx{C_i}x{h_i}x{w_i}: the stages are run in turn (transformers >= 5), or read from
        the documented ``output_hidden_states`` of transformers 4.x, which has no ``stages`` list."""
        if not hasattr(self.segformer, "stages"):
            return self.segformer(images, output_hidden_states=True, return_dict=True).hidden_states
        own = wants_checkpoint(self, self._own_checkpointing)
        outputs, hidden = [], images
        for stage in self.segformer.stages:
            hidden = self._stage_checkpointed(stage, hidden) if own else stage(hidden)
            outputs.append(hidden)
        return tuple(outputs)

    def encoder_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stage1..stage4`` of ``images`` without running the decoder (e.g. a frozen ImageNet encoder's)."""
        return {f"stage{i + 1}": stage for i, stage in enumerate(self.encode(images))}

    def forward(self, images: torch.Tensor, return_features: bool = False,
                perturb: Optional[Perturb] = None) -> ModelOutput:
        stages = self.encode(images) if perturb is None else tuple(perturb(list(self.encode(images))))
        decoder = self.decode(stages)
        logits = self.decode_head.classifier(self.decode_head.dropout(decoder))
        if not return_features:
            return logits
        features = {f"stage{i + 1}": stage for i, stage in enumerate(stages)}
        features["decoder"] = decoder
        return logits, features


# --- checkpoint key conversion -------------------------------------------------------------------------------------
# Original NVlabs / mmseg-0.13 naming (github.com/NVlabs/SegFormer) -> transformers 4.x naming (as transformers'
# convert_segformer_original_to_pytorch.py renames it).
_BLOCK_RENAMES = {
    "norm1.": "layer_norm_1.",
    "norm2.": "layer_norm_2.",
    "attn.q.": "attention.self.query.",
    "attn.proj.": "attention.output.dense.",
    "attn.sr.": "attention.self.sr.",
    "attn.norm.": "attention.self.layer_norm.",
    "mlp.fc1.": "mlp.dense1.",
    "mlp.fc2.": "mlp.dense2.",
    "mlp.dwconv.": "mlp.dwconv.",
}
_HEAD_RENAMES = {
    "linear_fuse.conv.": "linear_fuse.",
    "linear_fuse.bn.": "batch_norm.",
    "linear_pred.": "classifier.",
}
# transformers 4.x naming -> 5.x naming (applied only when the installed transformers uses the 5.x layout).
_HF5_RENAMES = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"^segformer\.encoder\.block\.(\d+)\.", r"segformer.stages.\1.blocks."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _original_to_hf4(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One original MiT/SegFormer key -> transformers-4.x key(s); None for a key with no counterpart."""
    enc = "segformer.encoder."
    if match := re.match(r"^patch_embed(\d)\.(proj|norm)\.(.+)$", key):
        stage, part, rest = int(match[1]) - 1, match[2], match[3]
        return {f"{enc}patch_embeddings.{stage}.{'proj' if part == 'proj' else 'layer_norm'}.{rest}": value}
    if match := re.match(r"^norm(\d)\.(.+)$", key):
        return {f"{enc}layer_norm.{int(match[1]) - 1}.{match[2]}": value}
    if match := re.match(r"^block(\d)\.(\d+)\.(.+)$", key):
        prefix, rest = f"{enc}block.{int(match[1]) - 1}.{match[2]}.", match[3]
        if rest.startswith("attn.kv."):  # fused (2C x ...) key/value projection: rows [0:C] key, [C:2C] value
            leaf = rest[len("attn.kv.") :]
            key_part, value_part = value.chunk(2, dim=0)
            return {f"{prefix}attention.self.key.{leaf}": key_part, f"{prefix}attention.self.value.{leaf}": value_part}
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old):
                return {prefix + new + rest[len(old) :]: value}
        return None
    if match := re.match(r"^decode_head\.linear_c(\d)\.proj\.(.+)$", key):
        return {f"decode_head.linear_c.{int(match[1]) - 1}.proj.{match[2]}": value}
    if key.startswith("decode_head."):
        rest = key[len("decode_head.") :]
        for old, new in _HEAD_RENAMES.items():
            if rest.startswith(old):
                return {"decode_head." + new + rest[len(old) :]: value}
    return None


def convert_mit_checkpoint(state: Mapping[str, torch.Tensor], model: SegFormer) -> Converted:
    """Any supported SegFormer/MiT checkpoint -> ``Converted`` (state in ``model``'s naming, dropped keys, origin).

    Accepted namings: original NVlabs ImageNet ``mit_bX.pth`` (``patch_embed1``, ``block1.0.attn.kv``, ...; its
    ``head.*`` ImageNet classifier is dropped), NVlabs/mmseg-0.13 segmentation checkpoints (``backbone.*``,
    ``decode_head.linear_c1``...; ``decode_head.conv_seg`` dropped), transformers 4.x (``segformer.encoder.*``,
    e.g. the hub's ``nvidia/mit-b0`` ``model.safetensors``; its ImageNet ``classifier.*`` is dropped) and the
    installed transformers' own naming. Keys that match none of these are kept unchanged so the loader reports them.
    With ``decoder: daformer`` an mmseg DAFormer head (``decode_head.embed_layers...``, ``decode_head.fuse_layer...``)
    keeps its names and its ``decode_head.conv_seg`` becomes ``decode_head.classifier``.
    """
    hf5 = hasattr(model.segformer, "stages")
    daformer = getattr(model, "decoder_kind", "mlp") == "daformer"
    converted: CheckpointState = {}
    dropped: list[str] = []
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = key[len("backbone.") :] if key.startswith("backbone.") else key
        if daformer and name.startswith("decode_head.conv_seg."):
            name = "decode_head.classifier." + name[len("decode_head.conv_seg.") :]
        elif name.startswith(("head.", "classifier.", "decode_head.conv_seg.")):
            dropped.append(key)
            continue
        # Original names never collide with transformers names, so HF keys fall through unchanged.
        mapped = _original_to_hf4(name, value) or {name: value}
        for new_key, tensor in mapped.items():
            if hf5:
                for pattern, replacement in _HF5_RENAMES:
                    new_key = re.sub(pattern, replacement, new_key)
            converted[new_key] = tensor
            origin[new_key] = key
    return Converted(converted, dropped, origin)


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"model option {name} must be in [0, 1), got {value!r}")


@MODELS.register("segformer_b0", "segformer_b1", "segformer_b2", "segformer_b3", "segformer_b4", "segformer_b5")
def build_segformer(
    arch: str,
    num_classes: int,
    *,
    tiny: bool = False,
    pretrained: str | None = None,
    drop_path: float = 0.1,
    dropout: float = 0.1,
    decoder: str = "mlp",
) -> SegFormer:
    """SegFormer MiT-B0..B5 with the all-MLP decoder (tiny: depth 1 per stage, 8-128 channels).

    Options:
        drop_path: stochastic-depth rate of the encoder blocks, growing linearly to this value (0 = off)
        dropout: dropout rate before the classifier
        decoder: ``mlp`` (SegFormer's all-MLP decoder) or ``daformer`` (DAFormer's context-aware fusion:
            256-channel embeddings, depthwise-separable ASPP 1/6/12/18, 3x3 bottleneck; tiny: the variant's
            decoder width; docs/daformer.md)
    """
    variant = arch.rsplit("_", 1)[1]
    _check_rate("drop_path", drop_path)
    _check_rate("dropout", dropout)
    chosen = TINY_MIT_SPECS[variant] if tiny else MIT_SPECS[variant]
    if decoder == "daformer" and not tiny:
        chosen = replace(chosen, decoder_dim=DAFORMER_CHANNELS)
    model = SegFormer(segformer_config(chosen, num_classes, drop_path=drop_path, dropout=dropout), decoder)
    if pretrained is not None:
        files = PRETRAINED_FILES["archs"][arch]
        filename = files["imagenet"][0]
        load_pretrained(
            model,
            pretrained,
            filenames=files,
            how_to_get=(
                f"download {filename} from the SegFormer release (NVlabs SegFormer, ImageNet-1k MiT weights) "
                f"and pass model.pretrained=/path/{filename} (or put it in the torch hub cache and pass "
                f"model.pretrained=imagenet)"
            ),
            convert=convert_mit_checkpoint,
            encoder_prefix=SegFormer.encoder_prefix,
            classifier_prefix=SegFormer.classifier_prefix,
        )
    return model
