"""Write the two sequence-disjoint CamVid folds shipped in ``dasuite/data/camvid_folds/``.

All 701 SegNet images (train + val + test folders) are grouped by sequence (the file-name prefix before ``_``)
and each sequence is sorted by frame number. Fold 1 holds 0001TP, 0006R0 and Seq05VD (124 + 101 + 171 = 396
images), fold 2 holds 0016E5 (305): with four sequences this is the most balanced split (the alternatives differ
by 111 images or more). In each sequence the last ``round(0.2 * n)`` frames (one contiguous block at the end)
form the fold's val list and the rest its train list, so adjacent near-duplicate frames do not straddle train
and val except at a single boundary per sequence.

Usage: python tools/make_camvid_folds.py --root /path/to/camvid [--out dasuite/data/camvid_folds]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

FOLD_SEQUENCES = {1: ("0001TP", "0006R0", "Seq05VD"), 2: ("0016E5",)}
VAL_FRACTION = 0.2
SPLITS = ("train", "val", "test")


def frame_number(name: str) -> int:
    """``0016E5_07959.png`` -> 7959, ``Seq05VD_f01710.png`` -> 1710."""
    match = re.fullmatch(r"[^_]+_f?(\d+)\.png", name)
    if match is None:
        raise ValueError(f"unexpected CamVid file name {name!r}")
    return int(match.group(1))


def sequences(root: Path) -> dict[str, list[str]]:
    """Sequence prefix -> relative image paths (``train/0001TP_006690.png``) sorted by frame number."""
    found: dict[str, list[str]] = {}
    for split in SPLITS:
        for image in (root / split).glob("*.png"):
            found.setdefault(image.name.split("_", 1)[0], []).append(f"{split}/{image.name}")
    return {seq: sorted(paths, key=lambda p: frame_number(Path(p).name)) for seq, paths in found.items()}


def make_folds(root: Path) -> dict[str, list[str]]:
    """``{"fold1_train": [...], "fold1_val": [...], "fold2_train": [...], "fold2_val": [...]}``."""
    by_seq = sequences(root)
    expected = {s for seqs in FOLD_SEQUENCES.values() for s in seqs}
    if set(by_seq) != expected:
        raise SystemExit(f"expected sequences {sorted(expected)} under {root}, found {sorted(by_seq)}")
    folds: dict[str, list[str]] = {}
    for fold, seqs in FOLD_SEQUENCES.items():
        train, val = [], []
        for seq in seqs:
            frames = by_seq[seq]
            cut = len(frames) - round(VAL_FRACTION * len(frames))
            train += frames[:cut]
            val += frames[cut:]
        folds[f"fold{fold}_train"], folds[f"fold{fold}_val"] = train, val
    return folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="CamVid root in the SegNet layout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "dasuite/data/camvid_folds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, paths in make_folds(args.root).items():
        fold = name[4]
        header = (
            f"# CamVid {name}: sequences {', '.join(FOLD_SEQUENCES[int(fold)])}; "
            f"val = last {VAL_FRACTION:.0%} of each sequence by frame number. Written by tools/make_camvid_folds.py\n"
        )
        (args.out / f"{name}.txt").write_text(header + "".join(f"{p}\n" for p in paths))
        print(f"{name}: {len(paths)} images")


if __name__ == "__main__":
    main()
