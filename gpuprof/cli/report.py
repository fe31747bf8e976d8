"""`gpuprof report RUN`: plots and a markdown summary of a sweep run; works without a GPU."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof import report
from gpuprof.cli.output import console


@click.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Where to write report.md and the PNGs [RUN/report].")
def command(run: Path, out: Path | None) -> None:
    """Roofline, utilization and decode-step plots and a findings table for the sweep in RUN (no GPU needed)."""
    made = report.make_report(run, out)
    console.print(f"wrote {made.markdown}")
    for image in made.images:
        console.print(f"wrote {image}")
