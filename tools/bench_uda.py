"""Domain adaptation steps of the DAFormer family: MIC vs DACS, HRDA vs DAFormer step time, and the peak memory of a
MIC(HRDA) MiT-B5 step, side by side in one run.

**Speed** (default): each variant runs ``Trainer.fit`` on cached batches (``tools/bench_engine.py``'s
``_cached_batches``: the same pre-augmented source crops for every variant; the target crops are their mirror
images) in its own process, the variants alternating, ``--repeats`` times; median time per iteration over
``--iters`` iterations after ``--warmup`` ones, the best repeat kept (``_per_iter``). Default model: full-size
SegFormer-B0 with DAFormer's decoder (``model.options.decoder: daformer``), 256x256, batch 2 per role. Variants:

- ``source_only`` (``experiments/toy/source_only.yaml``) and ``dacs`` (``experiments/toy/cutmix_pseudo.yaml``: EMA
  teacher, CutMix, strong augmentation), ``mic`` (the same + ``method.masking``, MIC's settings: weight 1, 64-pixel
  blocks, ratio 0.7, its own strong draw);
- ``hrda_source_only``, ``hrda_dacs``, ``hrda_mic``: the same methods with ``model.arch: hrda`` wrapping that
  network, context 0.5, detail crop half the side, at the same input resolution.

Prints one line per variant (wall and CPU time per step: with one thread the process's CPU time hardly depends on
other jobs sharing the machine), the CPU-time ratios, and as its last line ``mic_dacs_ratio=.. hrda_source_only_ratio=.. hrda_dacs_ratio=..``
(MIC / DACS and HRDA / DAFormer for source-only and DACS; targets: MIC <= 1.5).

**Memory** (``--memory``): a MIC(HRDA) step (source, mixed and masked student forwards held together for one
backward, as the engine does) of a MiT-B5 (DAFormer decoder) at ``--mem-size`` crops, batch 2, context 0.5, detail
crop half the side, fp32 / bf16 x gradient checkpointing off / on:

- *estimated* at that size on the meta device (``tools/estimate_cost.py``'s method): weights, gradients and AdamW's
  two moments of the student, the EMA teacher's weights, the tensors autograd saves in the three forwards and their
  losses (shared storages once; with checkpointing also the inputs each checkpointed block keeps), the batches, and
  ``estimate_cost.OVERHEAD_GIB`` for the CUDA context and allocator slack. The meta device has no autocast, so the
  bf16 rows scale the saved tensors by the bf16 / fp32 ratio of the saved bytes counted on real CPU tensors at
  ``--factor-size`` (same network, same hooks, under CPU bf16 autocast);
- *validated* (``--validate``): the same step run for real by ``Trainer.fit`` on the CPU at ``--validate-size`` in a
  child process limited to ``--mem-limit-gib`` GiB of address space above its start-up size (``RLIMIT_AS``, so an
  underestimate fails the child and not the machine); measured: the peak resident size (VmHWM) minus the resident
  size before the model was built, against the estimate at that size without the CUDA overhead.

    OMP_NUM_THREADS=1 python tools/bench_uda.py                              # speed, SegFormer-B0, 256x256
    OMP_NUM_THREADS=1 python tools/bench_uda.py --memory --validate          # B5 MIC(HRDA) memory at 1024
    python tools/bench_uda.py --smoke                                        # tiny settings, both parts, ~20 s
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_engine import _cached_batches, _peak_mib, _per_iter, _reset_peak, side_result  # noqa: E402
from dasuite.fileio import write_json  # noqa: E402

MIC = ["method.masking={weight: 1.0, patch: 64, ratio: 0.7, augment: true}"]
VARIANTS = {  # name: (experiment under experiments/toy, HRDA?, extra overrides)
    "source_only": ("source_only.yaml", False, []),
    "dacs": ("cutmix_pseudo.yaml", False, []),
    "mic": ("cutmix_pseudo.yaml", False, MIC),
    "hrda_source_only": ("source_only.yaml", True, []),
    "hrda_dacs": ("cutmix_pseudo.yaml", True, []),
    "hrda_mic": ("cutmix_pseudo.yaml", True, MIC),
}
RATIOS = [("mic_dacs_ratio", "mic", "dacs"), ("hrda_source_only_ratio", "hrda_source_only", "source_only"),
          ("hrda_dacs_ratio", "hrda_dacs", "dacs"), ("hrda_mic_ratio", "hrda_mic", "mic")]


def model_overrides(arch: str, tiny: bool, hrda: bool, size: int) -> list[str]:
    """``arch`` with DAFormer's decoder, or HRDA around it (context 0.5, detail crop ``size // 2``)."""
    decoder = "{decoder: daformer}" if arch.startswith("segformer") else "{}"
    if not hrda:
        return [f"model.arch={arch}", f"model.tiny={str(tiny).lower()}", f"model.options={decoder}"]
    return ["model.arch=hrda", f"model.tiny={str(tiny).lower()}",
            f"model.options={{base: {arch}, base_options: {decoder}, context_scale: 0.5, "
            f"detail_crop: [{size // 2}, {size // 2}]}}"]


def method_step(experiment: str, overrides: list[str], args, precision: str | None = None) -> dict:
    """``Trainer.fit`` of ``experiments/toy/<experiment>`` with ``overrides`` on cached batches (source: bench_engine's
    crops at ``args.size``; target: their mirror images), in this process; step end times and the peak after
    warm-up. ``baseline_mib``: the resident size before the trainer was built (CPU)."""
    import torch

    from dasuite.config import load_config
    from dasuite.config.load import read_yaml
    from dasuite.engine.loop import Trainer

    baseline = 0.0 if torch.cuda.is_available() else _rss_mib()
    path = ROOT / "experiments" / "toy" / experiment
    has_target = read_yaml(path)["data"].get("target") is not None
    cfg = load_config(path, [
        f"train.batch_size={args.batch}", f"train.max_iters={args.warmup + args.iters}",
        "train.eval_interval=100000", "train.checkpoint_interval=100000", "train.log_interval=1000",
        *([f"train.mixed_precision='{precision}'"] if precision else []), "data.num_workers=0", "data.val=null",
        "data.test=null", "data.source.augment.crop=null", *(["data.target.augment.crop=null"] if has_target else []),
        "log.progress_bar=false", f"work_dir={args.work_dir}", f"tag=bench_uda{time.time_ns()}", *overrides])
    trainer = Trainer(cfg)
    device = trainer.accelerator.device
    source = _cached_batches(args, device)
    target = [{"image": b["image"].flip(-1), "label": None, "name": b["name"]} for b in source]
    counter = iter(range(10**9))

    def batches() -> dict:
        i = next(counter) % len(source)
        return {"source": source[i], **({"target": target[i]} if "target" in trainer.loaders else {})}

    trainer._next_batches = batches
    stamps, cpu = [time.perf_counter()], [time.process_time()]
    original_end = trainer.method.on_step_end

    def on_step_end(step: int) -> None:
        original_end(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        if step + 1 == args.warmup and not getattr(args, "whole_peak", False):
            _reset_peak(device)

    trainer.method.on_step_end = on_step_end
    trainer.fit()
    return {"times": stamps[1:], "cpu_times": cpu[1:], "first_s": stamps[1] - stamps[0], "peak_mib": _peak_mib(device),
            "baseline_mib": baseline, "threads": torch.get_num_threads()}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _bench_args(args, size: int) -> argparse.Namespace:
    """What ``bench_engine._cached_batches`` reads (its config's model fields are not used for the batches)."""
    return argparse.Namespace(arch="segformer_b0", tiny=True, size=(size, size), batch=args.batch,
                              warmup=args.warmup, iters=args.iters, work_dir=args.work_dir)


def run_speed_side(args) -> dict:
    experiment, hrda, extra = VARIANTS[args.side]
    return method_step(experiment, [*model_overrides(args.arch, args.tiny, hrda, args.size), *extra],
                       _bench_args(args, args.size))


def run_memory_side(args) -> dict:
    """One real MIC(HRDA) step pair at ``--validate-size`` under an address-space limit (``--side mem_<p>_<ck>``)."""
    import torch

    _, precision, ckpt = args.side.split("_")
    if args.mem_limit_gib > 0 and not torch.cuda.is_available():  # CUDA reserves address space far beyond its use
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = int(_vm_size_bytes() + args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    a = _bench_args(args, args.validate_size)
    a.warmup, a.iters, a.whole_peak = 1, 1, True  # step 1 allocates AdamW's state, step 2 holds it: peak over both
    overrides = [*model_overrides(args.mem_arch, args.tiny, True, args.validate_size), *MIC,
                 f"train.grad_checkpointing={str(ckpt == 'on').lower()}"]
    return method_step("cutmix_pseudo.yaml", overrides, a, precision="bf16" if precision == "bf16" else "no")


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


# ----------------------------------------------------------------------------------------------- memory estimate


def _hrda_model(arch: str, size: int, tiny: bool, device: str = "meta"):
    import torch

    from dasuite.models import create_model

    options = {"base": arch, "base_options": {"decoder": "daformer"}, "context_scale": 0.5,
               "detail_crop": [size // 2, size // 2]}
    with torch.device(device):
        return create_model("hrda", 19, tiny=tiny, **options).train()


def saved_bytes(model, size: int, batch: int, checkpointing: bool, device: str = "meta",
                bf16: bool = False) -> dict:
    """Bytes autograd keeps for one backward of a MIC(HRDA) step: three student forwards (source, mixed, masked)
    with their losses (``multires_seg_loss``, ``multires_loss(weighted_ce)``), shared storages once; with
    checkpointing also the inputs every checkpointed encoder block keeps for its recomputation."""
    import torch

    from dasuite.losses import hrda as multires
    from dasuite.methods.mean_teacher import weighted_ce

    model.set_grad_checkpointing(checkpointing)
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> None:
        saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()

    def pack(t):
        keep(t)
        return t

    def keep_inputs(module, inputs) -> None:
        for x in inputs:
            if torch.is_tensor(x):
                keep(x)

    handles = []
    if checkpointing:  # the checkpointed blocks keep their inputs (non-reentrant torch.utils.checkpoint)
        handles = [m.register_forward_pre_hook(keep_inputs) for m in model.modules()
                   if type(m).__name__ == "SegformerLayer"]
    with torch.device(device):
        images = [torch.randn(batch, 3, size, size) for _ in range(3)]
        labels = torch.randint(0, 19, (batch, size, size))
        weights = torch.rand(batch, size, size)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            multires.multires_seg_loss(model(images[0]), labels)
            multires.multires_loss(weighted_ce, model(images[1]), labels, weights)
            multires.multires_loss(weighted_ce, model(images[2]), labels, weights)
    finally:
        for h in handles:
            h.remove()
    return {"saved": sum(saved.values()), "batches": sum(x.nbytes for x in images) + labels.nbytes}


def estimate_memory(arch: str, size: int, batch: int, checkpointing: bool, bf16_factor: float | None,
                    tiny: bool = False) -> dict:
    """GiB of a MIC(HRDA) step on a GPU (module docstring); ``bf16_factor``: scale of the saved tensors (None: fp32)."""
    from tools.estimate_cost import GIB, OVERHEAD_GIB, _params

    model = _hrda_model(arch, size, tiny)
    counted = saved_bytes(model, size, batch, checkpointing)
    params = _params(model) * 4
    state = {"weights": params, "gradients": params, "adamw_moments": 2 * params, "ema_teacher": params,
             "saved_activations": counted["saved"] * (bf16_factor or 1.0), "batches": counted["batches"]}
    state = {k: v / GIB for k, v in state.items()}
    state["tensors"] = sum(state.values())
    state["overhead"] = OVERHEAD_GIB
    state["total"] = state["tensors"] + OVERHEAD_GIB
    state["params_m"] = params / 4 / 1e6
    return state


def bf16_factor(arch: str, size: int, batch: int, tiny: bool) -> dict[bool, float]:
    """bf16 / fp32 ratio of the saved bytes on real CPU tensors at ``size`` (checkpointing off and on)."""
    import torch

    torch.manual_seed(0)
    model = _hrda_model(arch, size, tiny, device="cpu")
    out = {}
    for ckpt in (False, True):
        fp32 = saved_bytes(model, size, batch, ckpt, device="cpu")["saved"]
        bf16 = saved_bytes(model, size, batch, ckpt, device="cpu", bf16=True)["saved"]
        out[ckpt] = bf16 / fp32
    return out


MEMORY_SIDES = [("fp32", "off"), ("fp32", "on"), ("bf16", "off"), ("bf16", "on")]


def run_memory(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    factors = bf16_factor(args.mem_arch, args.factor_size, args.batch, args.tiny)
    print(f"bf16 / fp32 saved bytes at {args.factor_size}x{args.factor_size} (real CPU tensors): checkpointing "
          f"off {factors[False]:.3f}, on {factors[True]:.3f}", flush=True)
    s = args.mem_size
    print(f"estimate: MIC(HRDA) {args.mem_arch}{' (tiny)' if args.tiny else ''} + DAFormer decoder, {s}x{s} crops "
          f"(context {s // 2}, detail {s // 2}), batch {args.batch} per role, AdamW, EMA teacher, one backward of "
          f"source + mixed + masked")
    print("| precision | checkpointing | weights+grads+AdamW+EMA | saved activations | batches | tensors | "
          "+ overhead = GPU estimate | fits a 24 GB card (24576 MiB)? |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    results: dict = {"bf16_factor": {str(k): v for k, v in factors.items()}, "estimate": {}, "validate": {}}
    for precision, ckpt in MEMORY_SIDES:
        e = estimate_memory(args.mem_arch, s, args.batch, ckpt == "on",
                            factors[ckpt == "on"] if precision == "bf16" else None, args.tiny)
        results["estimate"][f"{precision}_{ckpt}"] = e
        static = e["weights"] + e["gradients"] + e["adamw_moments"] + e["ema_teacher"]
        print(f"| {precision} | {ckpt} | {static:.2f} GiB | {e['saved_activations']:.2f} GiB | {e['batches']:.2f} GiB "
              f"| {e['tensors']:.2f} GiB | {e['total']:.2f} GiB | {'yes' if e['total'] <= 24 else 'no'} |",
              flush=True)
    if args.validate:
        v = args.validate_size
        print(f"validation: the real step on this CPU at {v}x{v} (context {v // 2}, detail {v // 2}), batch "
              f"{args.batch}, 2 steps, RLIMIT_AS start + {args.mem_limit_gib:g} GiB; measured = VmHWM - RSS before "
              f"the model was built; estimated = tensors at {v}x{v}")
        print("| precision | checkpointing | estimated | measured | measured / estimated | step: wall, CPU |")
        print("|---|---|---:|---:|---:|---:|")
        for precision, ckpt in MEMORY_SIDES if not args.validate_fp32_only else MEMORY_SIDES[:2]:
            e = estimate_memory(args.mem_arch, v, args.batch, ckpt == "on",
                                factors[ckpt == "on"] if precision == "bf16" else None, args.tiny)
            r = _child([f"--side", f"mem_{precision}_{ckpt}"], args)
            measured = (r["peak_mib"] - r["baseline_mib"]) / 1024
            step, cpu = r["times"][-1] - r["times"][-2], r["cpu_times"][-1] - r["cpu_times"][-2]
            results["validate"][f"{precision}_{ckpt}"] = {"estimated_gib": e["tensors"], "measured_gib": measured,
                                                          "step_s": step, "cpu_s": cpu, **r}
            print(f"| {precision} | {ckpt} | {e['tensors']:.2f} GiB | {measured:.2f} GiB | "
                  f"{measured / e['tensors']:.3f} | {step:.1f} s, {cpu:.1f} s |", flush=True)
    if args.json:
        write_json(results, args.json)


def _child(extra: list[str], args) -> dict:
    return side_result(__file__, extra, sys.argv[1:], cwd=ROOT)


def run_speed(args) -> None:
    variants = [v for v in VARIANTS if v in args.variants]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            r = _child(["--side", variant], args)
            r["step_s"] = _per_iter(r["times"], args.warmup)
            r["cpu_s"] = _per_iter(r["cpu_times"], args.warmup)
            results[variant].append(r)
            print(f"{variant:>18}: {r['step_s'] * 1000:8.1f} ms/iter, CPU {r['cpu_s'] * 1000:8.1f} ms/iter, peak "
                  f"{r['peak_mib']:7.0f} MiB", flush=True)
    step = {v: min(r["step_s"] for r in rs) for v, rs in results.items()}
    cpu = {v: min(r["cpu_s"] for r in rs) for v, rs in results.items()}
    peak = {v: min(r["peak_mib"] for r in rs) for v, rs in results.items()}
    first = next(iter(results.values()))[0]
    print(f"model {args.arch}{' (tiny)' if args.tiny else ''} + DAFormer decoder, batch {args.batch} per role, "
          f"{args.size}x{args.size}, HRDA: context 0.5, detail {args.size // 2}x{args.size // 2}; "
          f"{first['threads']} threads, {args.iters} measured iterations after {args.warmup} x {args.repeats} repeats")
    for v in variants:
        runs = ", ".join(f"{r['step_s'] * 1000:.1f}" for r in results[v])
        print(f"{v:>18}: {step[v] * 1000:8.1f} ms/iter (all: {runs}), CPU {cpu[v] * 1000:8.1f} ms/iter   "
              f"peak {peak[v]:7.0f} MiB")
    ratios = {name: step[a] / step[b] for name, a, b in RATIOS if a in step and b in step}
    cpu_ratios = {name: cpu[a] / cpu[b] for name, a, b in RATIOS if a in cpu and b in cpu}
    if args.json:
        args.json.write_text(json.dumps({"step_s": step, "cpu_s": cpu, "peak_mib": peak, "ratios": ratios,
                                         "cpu_ratios": cpu_ratios, "runs": results}))
    print("CPU-time ratios (one thread: robust to other jobs on the machine): "
          + " ".join(f"{name}={value:.3f}" for name, value in cpu_ratios.items()))
    print(" ".join(f"{name}={value:.3f}" for name, value in ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="segformer_b0")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, default=256, help="square crops of the speed part")
    parser.add_argument("--batch", type=int, default=2, help="per role")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--memory", action="store_true", help="the MIC(HRDA) memory part instead of the speed part")
    parser.add_argument("--mem-arch", default="segformer_b5")
    parser.add_argument("--mem-size", type=int, default=1024)
    parser.add_argument("--validate", action="store_true", help="--memory: measure the real step at --validate-size")
    parser.add_argument("--validate-size", type=int, default=256)
    parser.add_argument("--factor-size", type=int, default=128,
                        help="--memory: crops at which the bf16 / fp32 ratio of saved bytes is counted on real CPU "
                             "tensors (bf16 autocast is slow on CPUs without AVX-512 BF16)")
    parser.add_argument("--validate-fp32-only", action="store_true", help="skip the (slow on a CPU) bf16 validation")
    parser.add_argument("--mem-limit-gib", type=float, default=8.0,
                        help="address space a validation child may add to its start-up size (0: no limit; "
                             "never on CUDA)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings for both parts (a test of the script)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--work-dir", default="/tmp/dasuite_bench_runs")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.tiny, args.size, args.warmup, args.iters, args.repeats = True, 64, 1, 2, 1
        args.mem_arch, args.mem_size, args.validate_size, args.factor_size = "segformer_b0", 128, 64, 64
    if args.side:
        out = run_memory_side(args) if args.side.startswith("mem_") else run_speed_side(args)
        print("RESULT " + json.dumps(out))
        return
    if args.memory:
        run_memory(args)
    else:
        run_speed(args)


if __name__ == "__main__":
    main()
