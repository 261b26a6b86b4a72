"""Estimated training cost of the shipped full-size experiments: FLOPs per iteration, total compute, GPU-hours at two
assumed throughputs, and peak GPU memory; the numbers of docs/reproduce.md.

Nothing here runs on a GPU. Every model is built on PyTorch's ``meta`` device (no memory, no compute), so on any CPU
in about a minute:

- **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of dasuite's own
  networks at the experiment's input sizes; a training step is taken as 3x the forward FLOPs of the images that get
  gradients (forward + backward) plus 1x those of the no-grad forwards (EMA or KD teacher). Evaluation is left out.
- **GPU-hours** = total FLOPs / an effective throughput. Two are shown, both assumptions: 2.8 TFLOPS, the rate that
  DAFormer's reported 16 h for 40k iterations on one RTX 2080 Ti (github.com/lhoyer/HRDA issue #14) implies under
  this same counting (the ``daformer_anchor`` row: MiT-B5, 2 + 2 512x512 crops, a teacher and an ImageNet-feature
  forward), and 10 TFLOPS, a round figure for a recent data-centre GPU in fp32/TF32 (not measured).
- **Memory** = fp32 weights, gradients and optimizer state (SGD with momentum: 3 copies, AdamW: 4) of the trained
  networks + the tensors autograd saves for backward in one step (counted with ``saved_tensors_hooks``, shared
  storages once, all images of the step at once: an upper bound when a method backpropagates source and target
  separately) + frozen teachers' weights + an assumed 1.5 GiB for the CUDA context, cuDNN workspaces and allocator
  slack. Mixed precision (bf16/fp16) roughly halves the activation part.

    python tools/estimate_cost.py            # markdown table
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field

GIB = 2**30
OVERHEAD_GIB = 1.5
RATES = (2.8, 10.0)  # effective TFLOPS assumed (see the module docstring)


@dataclass
class Setting:
    """One experiment's step: ``train`` (arch, options, [(w, h, n)]) images with gradients, ``frozen`` no-grad
    forwards, ``disc`` output-space discriminator calls [(w, h, n)], iterations, optimizer copies."""

    name: str
    arch: str
    train: list[tuple[int, int, int]]
    iterations: int
    options: dict = field(default_factory=dict)
    frozen: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    disc: list[tuple[int, int, int]] = field(default_factory=list)
    copies: int = 3  # weights + grads + SGD momentum; AdamW: 4
    cyclegan: bool = False


DLV2 = {"multi_level": False}
DLV2_MULTI = {"multi_level": True}
SETTINGS = [
    Setting("gta5_to_cityscapes/source_only_gta*.yaml, source_only_cyclegta*.yaml, source_only_gta_fda.yaml",
            "deeplabv2_r101", [(1024, 512, 1)], 120_000, DLV2),
    Setting("gta5_to_cityscapes/adaptsegnet_single.yaml", "deeplabv2_r101", [(1280, 720, 1), (1024, 512, 1)],
            250_000, DLV2, disc=[(1280, 720, 2), (1024, 512, 2)]),
    Setting("gta5_to_cityscapes/adaptsegnet_multi_lsgan.yaml", "deeplabv2_r101", [(640, 360, 1), (640, 320, 1)],
            250_000, DLV2_MULTI, disc=[(640, 320, 4)]),
    Setting("gta5_to_cityscapes/minent.yaml, advent.yaml", "deeplabv2_r101", [(1280, 720, 1), (1024, 512, 1)],
            120_000, DLV2_MULTI, disc=[(1024, 512, 4)]),
    Setting("gta5_to_cityscapes/minent_segformer.yaml, advent_segformer.yaml", "segformer_b5", [(512, 512, 4)],
            40_000, copies=4, disc=[(512, 512, 2)]),
    Setting("cutmix_pseudo.yaml", "deeplabv2_r101", [(640, 360, 4)], 40_000, DLV2,
            frozen=[("deeplabv2_r101", (640, 360, 2))], copies=4),
    Setting("gta5_to_cityscapes/single_adv_cutmix.yaml", "deeplabv2_r101", [(640, 360, 6)], 40_000, DLV2,
            frozen=[("deeplabv2_r101", (640, 360, 2))], disc=[(640, 360, 4)], copies=4),
    Setting("cityscapes/pseudo_label_finetune.yaml", "deeplabv2_r101", [(640, 360, 4)], 10_000, DLV2),
    Setting("cityscapes/pseudo_label_mix_scratch.yaml", "deeplabv2_r101", [(640, 360, 4)], 40_000, DLV2),
    Setting("gta5_to_cityscapes/cyclegan_gta2city.yaml", "cyclegan", [(256, 256, 1)], 100_000, cyclegan=True),
    Setting("camvid/segformer_b0*.yaml (one run)", "segformer_b0", [(384, 288, 4)], 40_000, copies=4),
    Setting("camvid/segformer_b2.yaml (one run)", "segformer_b2", [(384, 288, 4)], 40_000, copies=4),
    Setting("camvid/segformer_b4.yaml (one run)", "segformer_b4", [(384, 288, 4)], 40_000, copies=4),
    Setting("kd/camvid_b2_to_b0_*.yaml (one run)", "segformer_b0", [(384, 288, 4)], 40_000, copies=4,
            frozen=[("segformer_b2", (384, 288, 4))]),
    Setting("kd/camvid_b4_to_b0_*.yaml (one run)", "segformer_b0", [(384, 288, 4)], 40_000, copies=4,
            frozen=[("segformer_b4", (384, 288, 4))]),
    Setting("cityscapes/deeplabv3plus_r101*.yaml", "deeplabv3plus_r101", [(768, 768, 16)], 30_000),
    Setting("cityscapes/deeplabv3plus_r50.yaml", "deeplabv3plus_r50", [(768, 768, 16)], 30_000),
    Setting("cityscapes/deeplabv3plus_mobilenetv2.yaml", "deeplabv3plus_mobilenetv2", [(768, 768, 16)], 30_000),
    Setting("kd/cityscapes_r101_to_mbv2_stage1.yaml (each stage)", "deeplabv3plus_mobilenetv2", [(768, 768, 16)],
            30_000, frozen=[("deeplabv3plus_r101", (768, 768, 16))]),
    Setting("cityscapes/segformer_b0.yaml", "segformer_b0", [(1024, 1024, 8)], 160_000, copies=4),
    Setting("cityscapes/deeplabv3_r101.yaml", "deeplabv3_r101", [(1024, 512, 16)], 40_000, {"aux": True}),
    Setting("cityscapes/deeplabv3_r18.yaml", "deeplabv3_r18", [(1024, 512, 16)], 40_000, {"aux": True}),
    Setting("cityscapes/deeplabv3_mobilenetv2.yaml", "deeplabv3_mobilenetv2", [(1024, 512, 16)], 40_000),
    Setting("cityscapes/unimatch_r101_1of16.yaml (1/8, 1/4, 1/2: 78k, 67k, 44k iterations)", "deeplabv3plus_r101",
            [(801, 801, 32)], 83_520, {"output_stride": 16}),
    Setting("cityscapes/unimatch_v2_dinov2_b_1of16.yaml (1/8, 1/4, 1/2: 59k, 50k, 33k iterations)", "dinov2_vitb14",
            [(798, 798, 24)], 62_640, copies=4, frozen=[("dinov2_vitb14", (798, 798, 8))]),
    Setting("daformer_anchor (not an experiment: DAFormer's step, for the throughput)", "segformer_b5",
            [(512, 512, 4)], 40_000, {"decoder": "daformer"}, copies=4, frozen=[("segformer_b5", (512, 512, 2)), ("segformer_b5", (512, 512, 2))]),
]


def _meta(fn):
    import torch

    with torch.device("meta"):
        return fn()


def _model(arch: str, options: dict):
    from dasuite.models import create_model

    return _meta(lambda: create_model(arch, 19, **options))


def _forward(module, w: int, h: int, n: int, channels: int = 3, saved: dict | None = None) -> float:
    """Forward FLOPs of ``n`` images of ``w`` x ``h``; with ``saved``, record what autograd keeps for backward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = _meta(lambda: torch.randn(n, channels, h, w))
    call = (lambda t: module(t, return_features=True)) if getattr(module, "multi_level", False) else module

    def pack(t):
        saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with FlopCounterMode(display=False) as counter:
        if saved is None:
            with torch.no_grad():
                call(x)
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                call(x)
    return counter.get_total_flops()


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate(s: Setting) -> dict:
    from dasuite.models.discriminator import OutputSpaceDiscriminator

    saved: dict = {}
    if s.cyclegan:  # two generators and two PatchGANs; per step 6 generator and 6 discriminator passes
        from dasuite.models.gan import PatchDiscriminator, ResnetGenerator

        g, d = _meta(ResnetGenerator), _meta(PatchDiscriminator)
        w, h, n = s.train[0]
        grad = 6 * _forward(g, w, h, n) + 6 * _forward(d, w, h, n)
        for _ in range(2):
            _forward(g, w, h, 3 * n, saved=saved)
            _forward(d, w, h, 3 * n, saved=saved)
        weights = (2 * _params(g) + 2 * _params(d)) * 4 * 3
        frozen = frozen_weights = 0
    else:
        model = _model(s.arch, s.options)
        model.train()
        grad = sum(_forward(model, w, h, n, saved=saved) for w, h, n in s.train)
        weights = _params(model) * 4 * s.copies
        frozen = frozen_weights = 0
        for arch, (w, h, n) in s.frozen:
            teacher = _model(arch, s.options if arch == s.arch else {})
            teacher.eval()
            frozen += _forward(teacher, w, h, n)
            frozen_weights += _params(teacher) * 4
        if s.disc:
            disc = _meta(lambda: OutputSpaceDiscriminator(19))
            grad += sum(_forward(disc, w, h, n, channels=19) for w, h, n in s.disc)
            weights += 2 * _params(disc) * 4 * 3  # discriminators trained by Adam: weights, grads, 2 moments ~ 3-4
    step = 3 * grad + frozen
    total = step * s.iterations
    memory = (weights + frozen_weights + sum(saved.values())) / GIB + OVERHEAD_GIB
    return {"step_tflop": step / 1e12, "total_pflop": total / 1e15,
            "hours": [total / (rate * 1e12) / 3600 for rate in RATES], "memory_gib": memory}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    warnings.filterwarnings("ignore")
    print("| experiment | TFLOP / iteration | iterations | total PFLOP | GPU-hours at 2.8 / 10 TFLOPS | peak memory GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in SETTINGS:
        e = estimate(s)
        hours = " / ".join(f"{h:.0f}" if h >= 10 else f"{h:.1f}" for h in e["hours"])
        print(f"| {s.name} | {e['step_tflop']:.2f} | {s.iterations // 1000}k | {e['total_pflop']:.0f} | {hours} | "
              f"{e['memory_gib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
