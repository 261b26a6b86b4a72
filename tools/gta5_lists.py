"""Write the GTA5 list files dasuite's ``gta5`` dataset reads (``split_file``, ``exclude_list``) into the dataset
folder: ``blank_frames.txt`` (the two blank frames, shipped in ``dasuite/data/lists/gta5_blank_frames.txt``) and,
from the dataset authors' ``split.mat`` (in ``read_mapping.zip`` on the GTA5 download page), the official
``train.txt`` / ``val.txt`` / ``test.txt`` splits, one zero-padded stem per line (``00001``).

    python tools/gta5_lists.py --root $DASUITE_DATA/gta5 --split-mat /path/to/read_mapping/split.mat

``split.mat`` holds ``trainIds``, ``valIds`` and ``testIds``: 1-based frame numbers, i.e. the file stems (the same
reading as the CyCADA code, github.com/jhoffman/cycada_release, ``cycada/data/gta5.py``). The counts reported for it
are 12,403 / 6,382 / 6,181 (24,966 together); other counts are printed as a warning. UDA papers train on all 24,966
frames (``split: all``); the official split matters for GTA5-only evaluation and domain generalisation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLANK = ROOT / "dasuite" / "data" / "lists" / "gta5_blank_frames.txt"
EXPECTED = {"train": 12403, "val": 6382, "test": 6181}


def split_lists(split_mat: Path) -> dict[str, list[str]]:
    """{"train"|"val"|"test": sorted stems} from ``split.mat``."""
    from scipy.io import loadmat

    mat = loadmat(str(split_mat))
    out = {}
    for name in EXPECTED:
        key = f"{name}Ids"
        if key not in mat:
            raise SystemExit(f"{split_mat}: no {key!r} (keys: {', '.join(k for k in mat if not k.startswith('__'))})")
        ids = sorted({int(i) for i in mat[key].ravel()})
        out[name] = [f"{i:05d}" for i in ids]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the gta5 dataset folder ($DASUITE_DATA/gta5)")
    parser.add_argument("--split-mat", type=Path, help="split.mat of read_mapping.zip (official train/val/test)")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / "blank_frames.txt").write_text(BLANK.read_text())
    print(f"wrote {args.root / 'blank_frames.txt'}")
    if args.split_mat is None:
        return 0
    lists = split_lists(args.split_mat)
    for name, stems in lists.items():
        (args.root / f"{name}.txt").write_text("".join(s + "\n" for s in stems))
        note = "" if len(stems) == EXPECTED[name] else f"  (WARNING: {EXPECTED[name]} expected)"
        print(f"wrote {args.root / f'{name}.txt'}: {len(stems)} frames{note}")
    overlap = set(lists["train"]) & (set(lists["val"]) | set(lists["test"]))
    if overlap or set(lists["val"]) & set(lists["test"]):
        print("WARNING: the splits overlap", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
