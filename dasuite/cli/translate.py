"""``dasuite translate``: a CycleGAN run's generator over a whole dataset (delegates to ``dasuite.translate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from dasuite.cli.common import CONTEXT, echo, friendly_errors


@click.command("translate", context_settings=CONTEXT, epilog="""\b
Examples:
  dasuite translate --run-dir runs/CYCLEGAN_RUN/seed0 --input-dataset gta5 --out $DASUITE_DATA/cycle_gta5
  dasuite translate --run-dir RUN --out OUT --tile 512 --overlap 64 root=/data/gta5 split_file=train.txt
  dasuite translate --run-dir runs/toy_cyclegan/seed0 --out runs/toy_translated   (toy -> a folder dataset)""")
@click.option("--run-dir", "--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A cyclegan run directory (--run is an alias).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (resumable: finished files are kept).")
@click.option("--direction", default="source_to_target", help="source_to_target | target_to_source.")
@click.option("--checkpoint", default="last", help="last | a checkpoint path (.pt or .safetensors).")
@click.option("--input-dataset", help="Dataset to translate (default: the run's data.source, or data.target for "
                                      "target_to_source); KEY=VALUE arguments override its keys.")
@click.option("--tile", type=int, help="Translate in overlapping TILE x TILE windows (a multiple of 4).")
@click.option("--overlap", type=int, default=64, help="Pixels shared by neighbouring windows (blended linearly).")
@click.option("--max-side", type=int, default=2048, help="Without --tile, images with a longer side are tiled.")
@click.option("--batch-size", type=int, default=4, help="Images of one size translated together.")
@click.option("--num-workers", type=int, default=2, help="Processes that decode the input images.")
@click.option("--writers", type=int, default=4, help="Processes that encode and write the PNGs (0: a thread).")
@click.option("--verify", is_flag=True, help="Also decode every finished file and check its size.")
@click.option("--overwrite", is_flag=True, help="Replace a translation made with other settings in --out.")
@click.argument("overrides", nargs=-1)
@friendly_errors
def command(run_dir: Path, out: Path, direction: str, checkpoint: str, input_dataset: str | None,
            tile: int | None, overlap: int, max_side: int, overrides: tuple[str, ...], **options: Any) -> None:
    """Write every image of a dataset translated by a CycleGAN run's generator, in the parent dataset's layout
    and names, with a manifest; prints the dataset entry that trains on the result (docs/translate.md)."""
    from dasuite.models.tiling import Tiling
    from dasuite.translate import Options, translate

    manifest = translate(run_dir, out, direction=direction, checkpoint=checkpoint, input_dataset=input_dataset,
                         overrides=overrides, options=Options(Tiling(tile, overlap, max_side), **options))
    echo(format_result(manifest))


def format_result(manifest: dict) -> str:
    """What the command prints: counts, where the files are and the YAML entry that trains on them."""
    done, entry = manifest.get("last_pass", {}), manifest["dataset_entry"]
    kind = "a translated source" if manifest["output"] == "translated" else "a folder dataset"
    return "\n".join([
        f"{manifest['count']} of {manifest['total']} images translated ({done.get('written', 0)} written, "
        f"{done.get('skipped', 0)} already done) in {entry.get('images_root', entry.get('root'))}",
        f"use it as {kind} (data.source, or an entry of a source mix):",
        yaml.safe_dump(entry, sort_keys=False, default_flow_style=True, width=116).rstrip(),
    ])
