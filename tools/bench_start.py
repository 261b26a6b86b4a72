"""Start-up time of the commands a user runs most before anything trains: ``--help``, ``list models``, a config
error, and ``import dasuite.config``; this tree side by side with another revision (default: the commit before the
lazy registries, 24abbfd), each command alternating between the two trees, median wall time of ``--repeat`` runs.

    python tools/bench_start.py                 # prints a markdown table and the ratios
    python tools/bench_start.py --baseline HEAD~3 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = "experiments/toy/source_only.yaml"
COMMANDS = {
    "dasuite --help": ["-m", "dasuite", "--help"],
    "dasuite list models": ["-m", "dasuite", "list", "models"],
    "config error (typo)": ["-m", "dasuite", "run", TOY, "trian.max_iters=3"],
    "import dasuite.config": ["-c", "import dasuite.config"],
}


def timed(tree: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, env={"PYTHONPATH": str(tree),
                                                                                "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="24abbfd", help="Git revision to compare with.")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = []
            for name, command in COMMANDS.items():
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.repeat):
                    times["old"].append(timed(old, command))
                    times["new"].append(timed(ROOT, command))
                rows.append((name, statistics.median(times["old"]), statistics.median(times["new"])))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    print(f"| command | {args.baseline} (s) | now (s) | now / before |")
    print("|---|---:|---:|---:|")
    for name, before, now in rows:
        print(f"| {name} | {before:.2f} | {now:.2f} | {now / before:.3f} |")


if __name__ == "__main__":
    main()
