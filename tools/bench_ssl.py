"""Semi-supervised steps side by side: a supervised step, FixMatch (``mean_teacher``, ``variant: fixmatch``) and
UniMatch (``unimatch``), batched as dasuite runs it and unbatched (one forward per stream), in one run.

Each variant runs ``Trainer.fit`` on cached batches (``tools/bench_uda.py``'s ``method_step``: the same
pre-augmented crops for every variant; the unlabelled crops are their mirror images) in its own process, the
variants alternating, ``--repeats`` times; median time per iteration after ``--warmup`` ones, the best repeat
kept. Default model: full-size SegFormer-B0, 256x256, batch 2 labelled + 2 unlabelled. Variants:

- ``supervised``: ``experiments/toy/source_only.yaml`` on the labelled batch; ``supervised_4x``: the same on a
  batch 4 times as large, the images a UniMatch step forwards and backpropagates (labelled, weak, two strong);
- ``fixmatch``: an EMA teacher labels the weak views, the student learns from one strong view;
- ``unimatch``: the labelled and weak images in one forward with the feature-perturbation rows appended, both strong
  views in a second; ``unimatch_unbatched``: the same losses from five forwards (labelled, weak, perturbed weak,
  strong 1, strong 2; the perturbed stream re-runs the encoder), as a direct transcription of the paper would.

Prints one line per variant (wall and CPU time per step) and as its last line ``unimatch_supervised_ratio=..
unimatch_per_image_ratio=.. batched_unbatched_ratio=.. fixmatch_supervised_ratio=..`` (CPU time).

    OMP_NUM_THREADS=1 python tools/bench_ssl.py
    python tools/bench_ssl.py --smoke            # tiny settings, ~20 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_engine import _per_iter, side_result, step_arguments  # noqa: E402
from tools.bench_uda import method_step  # noqa: E402

TARGET = "data.target={name: toy, domain: real, split: train, size: [64, 48], num_images: 4}"
VARIANTS = {  # name: (labelled batch multiple, overrides)
    "supervised": (1, []),
    "supervised_4x": (4, []),
    "fixmatch": (1, [TARGET, "method={name: mean_teacher, variant: fixmatch, momentum: 0.99, threshold: 0.95, "
                             "confidence: ignore}"]),
    "unimatch": (1, [TARGET, "method={name: unimatch}"]),
    "unimatch_unbatched": (1, [TARGET, "method={name: unimatch}"]),
}


def unbatched_step(self, batches: dict, step: int) -> dict:
    """UniMatch's loss from five separate forwards (the benchmark's naive side; same terms as ``training_step``)."""
    import torch.nn.functional as F

    from dasuite.methods.mean_teacher import target_pseudo_labels, weighted_ce

    source, target = batches["source"], batches["target"]
    o = self.options
    logits_x = self.model(source["image"])
    weak = self.model(target["image"])
    fp = self.model(target["image"], perturb=lambda stages: [F.dropout2d(s, o.fp_dropout, True) for s in stages])
    pseudo, weights, _ = target_pseudo_labels(weak, target, o)
    views = self.strong_views(target["image"], pseudo, weights)
    strong = [weighted_ce(self.model(v[0]), v[1], v[2]) for v in views]
    terms = self.source_terms(source, logits_x, {})
    total = sum(terms.values()) + o.strong_weight * sum(strong) + o.fp_weight * weighted_ce(fp, pseudo, weights)
    return {"loss": o.loss_scale * total}


def run_side(args) -> dict:
    multiple, overrides = VARIANTS[args.side]
    bench = argparse.Namespace(arch=args.arch, tiny=args.tiny, size=tuple(args.size), batch=args.batch * multiple,
                               warmup=args.warmup, iters=args.iters, work_dir=args.work_dir)
    if args.side == "unimatch_unbatched":
        from dasuite.methods.unimatch import UniMatch

        UniMatch.training_step = unbatched_step
    return method_step("source_only.yaml", [f"model.arch={args.arch}", f"model.tiny={str(args.tiny).lower()}",
                                            *overrides], bench)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, warmup=2, iters=6)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (a test of the script)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--work-dir", default="/tmp/dasuite_bench_runs")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.tiny, args.size, args.warmup, args.iters, args.repeats = True, [64, 64], 1, 2, 1
    if args.side:
        print("RESULT " + json.dumps(run_side(args)))
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(side_result(__file__, ["--side", variant], sys.argv[1:]))
    wall = {v: min(_per_iter(r["times"], args.warmup) for r in rs) for v, rs in runs.items()}
    cpu = {v: min(_per_iter(r["cpu_times"], args.warmup) for r in rs) for v, rs in runs.items()}
    print(f"model {args.arch}{' (tiny)' if args.tiny else ''}, {args.size[0]}x{args.size[1]}, batch {args.batch} per role, "
          f"{args.iters} measured iterations x {args.repeats} repeats, {runs['supervised'][0]['threads']} threads")
    for v in VARIANTS:
        print(f"{v:>20}: {wall[v] * 1000:8.1f} ms/iter wall {cpu[v] * 1000:8.1f} ms/iter CPU "
              f"({cpu[v] / cpu['supervised']:.2f}x supervised)")
    ratios = {"unimatch_supervised_ratio": cpu["unimatch"] / cpu["supervised"],
              "unimatch_per_image_ratio": cpu["unimatch"] / cpu["supervised_4x"],
              "batched_unbatched_ratio": cpu["unimatch"] / cpu["unimatch_unbatched"],
              "fixmatch_supervised_ratio": cpu["fixmatch"] / cpu["supervised"]}
    if args.json:
        from dasuite.fileio import write_json

        write_json({"wall_s": wall, "cpu_s": cpu, **ratios,
                    "spread": {v: statistics.pstdev([_per_iter(r["cpu_times"], args.warmup) for r in rs])
                               for v, rs in runs.items()}}, args.json)
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
