"""`gpuprof validate DECODE_RUN ...`: the advisor's predicted decode throughput against measured decode runs."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof.cli.output import console, print_json, print_table
from gpuprof.validate import DEFAULT_TOLERANCE_PCT, FILE_NAME, validate

COLUMNS = {"batch": "batch", "context": "context", "measured_tokens_per_s": "measured tok/s",
           "predicted_tokens_per_s": "predicted tok/s", "error": "error %", "within": "within", "judged": "judged",
           "loop_measured_tokens_per_s": "loop tok/s", "loop_predicted_tokens_per_s": "loop predicted",
           "loop_error": "loop error %"}


@click.command("validate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
              help="calibration.json to predict with [traces/<gpu-slug>/calibration.json of the run's GPU, else "
                   "the datasheet roofline], as `gpuprof advise` resolves it.")
@click.option("--gpu", "gpu_name", help="GPU to predict for [the one each run was measured on]; needed for runs "
                                        "made on the CPU, and to compare with another GPU's calibration on purpose.")
@click.option("--tolerance", "tolerance_pct", type=float, default=DEFAULT_TOLERANCE_PCT, show_default=True,
              help="Largest |error| in % that passes, over batch sizes 1 to 256.")
@click.option("--step-overhead-us", type=float, help="Fixed cost per decode step, µs [the calibration's, 0 if none].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def command(runs, calibration_path, gpu_name, tolerance_pct, step_overhead_us, as_json) -> None:
    """Compare `gpuprof advise`'s predicted tokens/s with each RUN of `gpuprof decode`, per batch size.

    Writes RUN/validation.json for each run. Error = (predicted - measured) / measured.
    """
    report = validate(runs, calibration_path, gpu_name, tolerance_pct, step_overhead_us)
    if as_json:
        print_json(report)
        return
    for document in report["runs"]:
        show(document)
    if len(report["runs"]) > 1:
        verdict = {True: "every run within", False: "NOT every run within", None: "not every run judged at"}
        console.print(f"[bold]overall[/bold]: {verdict[report['meets_tolerance']]} ±{tolerance_pct:g}%")


def show(document: dict) -> None:
    console.print()
    where = document["measured_on"] or "the CPU"
    console.print(f"[bold]{document['model']}[/bold] ({document['dtype']}, {document['impl']}, ctx "
                  f"{document['ctx']}) measured on {where} in {document['run']}, predicted for "
                  f"{document['predicted_for']}")
    calibration = document["calibration"]
    console.print(f"calibration: {calibration['source']}; step overhead {calibration['step_overhead_us']:g} µs",
                  style=None if calibration["calibrated"] else "yellow")
    rows = [{**r, "error": f"{r['error_pct']:+.1f}", "within": "yes" if r["within_tolerance"] else "no",
             "judged": "yes" if r["judged"] else "no",
             "loop_error": None if r["loop_error_pct"] is None else f"{r['loop_error_pct']:+.1f}"}
            for r in document["rows"]]
    print_table([{label: row.get(key) for key, label in COLUMNS.items()} for row in rows], list(COLUMNS.values()),
                title=f"predicted against measured tokens/s, tolerance ±{document['tolerance_pct']:g}%")
    for missing in document["not_measured"]:
        console.print(f"batch {missing['batch']}: {missing['status']}, not compared ({missing['error']})",
                      style="dim")
    summary = document["summary"]
    style = {True: "green", False: "red", None: "yellow"}[summary["meets_tolerance"]]
    console.print(f"[bold]{document['model']}[/bold]: {summary['verdict']}", style=style)
    for note in document["notes"]:
        console.print(f"note: {note}", style="dim")
    console.print(f"written to {Path(document['run']) / FILE_NAME}")
