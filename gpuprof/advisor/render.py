"""The advisor's report for people: a few short tables and the vLLM command lines (`--json` prints the dict)."""

from __future__ import annotations

from gpuprof.cli.output import console, fmt, print_table

GiB = 1 << 30


def _gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.1f} GiB"


_VERDICT = {True: "yes", False: "no", None: None}


def _cell(key: str, value: object) -> object:
    if key == "within_latency":
        return _VERDICT[value]
    if key == "utilization_each":
        return f"{value:.2f}"
    return value


def _rows(rows: list[dict], names: dict[str, str]) -> list[dict]:
    """Rows with display names as keys and readable cells, for print_table."""
    return [{label: _cell(key, row.get(key)) for key, label in names.items()} for row in rows]


def render(report: dict) -> None:
    _header(report)
    _curve(report)
    if report.get("memory"):
        _memory(report["memory"])
    names = {"replicas": "replicas", "batch": "batch each", "tokens_per_s": "tokens/s", "itl_ms": "ITL ms",
             "within_latency": "ITL within bound", "utilization_each": "memory share each"}
    if report.get("replicas"):
        console.print()
        print_table(_rows(report["replicas"], names), list(names.values()),
                    title=f"replicas at B_opt = {report['b_opt']} ({_predicted(report)})")
    if report.get("pareto"):
        console.print()
        print_table(_rows(report["pareto"], names), list(names.values()),
                    title="throughput / latency Pareto frontier over (batch, replicas)")
    _vllm(report["vllm"])
    for note in report["notes"]:
        console.print(f"note: {note}", style="dim")


def _predicted(report: dict) -> str:
    if report["mode"] == "profile":
        return "measured at one replica, scaled by the predicted replica gain"
    return "predicted" if report["prediction"]["calibrated"] else "datasheet roofline: an upper bound"


def _header(report: dict) -> None:
    model, gpu = report.get("model"), report.get("gpu")
    what = f"{model['name']} ({model['dtype']})" if model else report["profile"]["path"]
    console.print(f"[bold]gpuprof advise[/bold]: {what}" + (f" on {gpu['name']}" if gpu else ""))
    if report["mode"] == "profile":
        cols = ", ".join(f"{role}: {col}" for role, col in report["profile"]["columns"].items())
        console.print(f"measured serving table {report['profile']['path']} (columns used: {cols})")
        for note in report["profile"]["notes"]:
            console.print(f"  {note}", style="dim")
    if report.get("prediction"):
        style = None if report["prediction"]["calibrated"] else "yellow"
        console.print(f"predictions: {report['prediction']['source']}", style=style)
    if report.get("workload"):
        w = report["workload"]
        console.print(f"workload: {w['description']}; mean decode context {w['mean_decode_context']:.0f} tokens; "
                      f"longest sequence {w['max_tokens']} tokens")


def _curve(report: dict) -> None:
    chosen = {}
    for rule, choice in report["choices"].items():
        chosen.setdefault(choice["batch"], []).append(rule)
    rows = [{**row, "chosen by": ", ".join(chosen.get(row["batch"], [])) or None} for row in report["curve"]]
    names = {"batch": "batch", "tokens_per_s": "tokens/s", "itl_ms": "ITL ms", "gain": "gain g(B)",
             "within_latency": "ITL within bound", "ttft_ms": "TTFT ms", "kv_cache_usage": "KV usage",
             "chosen by": "chosen by"}
    console.print()
    print_table(_rows(rows, names), list(names.values()), title=f"{report['curve_origin']} throughput by batch size")
    c = report["criteria"]
    bound = report["latency_bound_ms"]
    console.print(f"[bold]B_opt = {report['b_opt']}[/bold] (rule: {report['rule']}; epsilon {c['epsilon']:g}; "
                  f"latency bound {fmt(bound)} ms = {report['latency_bound_rule']})")
    for choice in report["choices"].values():
        console.print(f"  {choice['rule']} rule -> batch {choice['batch']}: {choice['why']}")


def _memory(m: dict) -> None:
    per_sequence = m["kv_bytes_per_token"] * m["kv_tokens_per_sequence"]
    console.print()
    console.print(f"[bold]memory[/bold]: GPU {_gib(m['gpu_memory_bytes'])} ({m['gpu_memory_source']}), "
                  f"{m['fraction']:.0%} usable = {_gib(m['usable_bytes'])}")
    console.print(f"  weights {_gib(m['weights_bytes'])}; KV cache {m['kv_bytes_per_token'] / 1024:.0f} KiB per "
                  f"token x {m['kv_tokens_per_sequence']:.0f} tokens per sequence (blocks of {m['block_tokens']}) = "
                  f"{per_sequence / 2**20:.0f} MiB per sequence")
    console.print(f"  KV cache at B_opt {m['b_opt']}: {_gib(m['kv_bytes_b_opt'])}; at {m['largest_batch']} "
                  f"({m['largest_batch_is']}): {_gib(m['kv_bytes_largest'])}; freed: {_gib(m['freed_bytes'])}")
    console.print(f"  one replica at B_opt needs {_gib(m['replica_bytes_b_opt'])} including a workspace allowance of "
                  f"{_gib(m['workspace_bytes'])} (an assumption: --workspace-gb); at most {m['max_batch_one_replica']} "
                  "sequences fit one replica")


def _vllm(v: dict) -> None:
    console.print()
    if "commands" not in v:
        console.print(f"[bold]vLLM[/bold]: --max-num-seqs {v['max_num_seqs']}")
        return
    console.print(f"[bold]vLLM[/bold]: {v['instances']} instance(s), --max-num-seqs {v['max_num_seqs']}, "
                  f"--gpu-memory-utilization {v['gpu_memory_utilization']:.2f} each ({v['start']}):")
    for command in v["commands"]:
        console.print(f"  {command}", soft_wrap=True)
