"""Nsight Compute: metric sets, command lines, ncu's messages, and its raw CSV.

tests/data/ncu/ holds hand-made files in ncu's documented layout until a GPU session records real ones (see its
README); the parser is also checked on inline variants (other units, thousands separators, odd NVTX cells).
"""

import os
from pathlib import Path

import pytest

from gpuprof.counters import ncu
from gpuprof.errors import GpuprofError

DATA = Path(__file__).parent / "data" / "ncu"
RAW = DATA / "handmade-sol-copy-read.raw.csv"


def test_column_names_follow_the_record_contract():
    assert ncu.column_name("dram__throughput.avg.pct_of_peak_sustained_elapsed") == (
        "ncu_dram__throughput_avg_pct_of_peak_sustained_elapsed")


@pytest.mark.parametrize("text, sets", [
    ("speed-of-light", ["speed-of-light"]),
    ("sol,memory", ["speed-of-light", "memory"]),
    ("memory, sol, memory", ["memory", "speed-of-light"]),
    ("all", ["speed-of-light", "memory", "compute", "stalls"]),
])
def test_metric_sets(text, sets):
    assert ncu.metric_sets(text) == sets


@pytest.mark.parametrize("text, message", [("roofline", "unknown metric set 'roofline'"), (" , ", "at least one")])
def test_bad_metric_sets(text, message):
    with pytest.raises(GpuprofError, match=message):
        ncu.metric_sets(text)


def test_metrics_for_sets_with_duration_once_and_hopper_tensor_pipe():
    names = [m.name for m in ncu.metrics_for(["speed-of-light", "memory", "compute"], compute_capability=9.0)]
    assert names.count("gpu__time_duration.sum") == 1
    assert {"dram__throughput.avg.pct_of_peak_sustained_elapsed", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
            "dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_sector_hit_rate.pct",
            "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
            "sm__warps_active.avg.pct_of_peak_sustained_active",
            "smsp__issue_active.avg.pct_of_peak_sustained_active"} <= set(names)
    assert "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active" in names
    ampere = [m.name for m in ncu.metrics_for(["compute"], compute_capability=8.0)]
    assert not any("gmma" in n for n in ampere)
    stalls = [m.name for m in ncu.metrics_for(["stalls"])]
    assert "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio" in stalls


def test_extra_metrics_are_checked():
    assert ncu.metrics_for([], ["l1tex__t_sector_hit_rate.pct"])[0].name == "l1tex__t_sector_hit_rate.pct"
    with pytest.raises(GpuprofError, match="not an ncu metric name"):
        ncu.metrics_for([], ["dram bytes; rm -rf"])


def test_profile_command_filters_on_the_measure_range(tmp_path):
    metrics = ncu.metrics_for(["speed-of-light"])
    argv = ncu.profile_command("/opt/ncu", ["python3", "-m", "gpuprof", "bench", "copy"], metrics,
                               tmp_path / "r.ncu-rep", tmp_path / "ncu.log", "gpuprof@measure/")
    text = " ".join(argv)
    assert argv[0] == "/opt/ncu" and "--clock-control none" in text and "--cache-control all" in text
    assert "--nvtx --nvtx-include gpuprof@measure/" in text
    assert argv[argv.index("--metrics") + 1] == ",".join(m.name for m in metrics)
    assert argv[argv.index("--export") + 1] == str(tmp_path / "r.ncu-rep")
    assert argv[-5:] == ["python3", "-m", "gpuprof", "bench", "copy"]
    unfiltered = ncu.profile_command("ncu", ["./app"], metrics, tmp_path / "r", tmp_path / "l", None, launch_count=20)
    assert "--nvtx" not in unfiltered and unfiltered[unfiltered.index("--launch-count") + 1] == "20"


def test_import_command_asks_for_raw_csv_in_base_units(tmp_path):
    argv = ncu.import_command("ncu", tmp_path / "r.ncu-rep")
    assert argv[1:] == ["--import", str(tmp_path / "r.ncu-rep"), "--csv", "--page", "raw", "--print-units", "base"]


def test_parse_raw_csv():
    table = ncu.parse_raw_csv(RAW.read_text())
    assert len(table.rows) == 9
    first = table.rows[0]
    assert first["ncu_id"] == 0 and first["pid"] == 4242 and first["kernel_name"].startswith("void at::native::")
    assert first["ncu_gpu__time_duration_sum"] == 364102.0  # "364,102" nanoseconds
    assert first["ncu_dram__throughput_avg_pct_of_peak_sustained_elapsed"] == 91.84
    assert first["block"] == "(128, 1, 1)" and first["cc"] == "9.0"
    assert table.units["ncu_gpu__time_duration_sum"] == "nsecond"
    assert table.units["ncu_sm__throughput_avg_pct_of_peak_sustained_elapsed"] == "%"
    assert ncu.nvtx_ranges(first["nvtx"]) == [("gpuprof", "copy/torch #1 n=268435456 dtype=bf16"),
                                              ("gpuprof", "measure")]


def test_parse_raw_csv_brings_units_to_base_and_skips_ncu_messages():
    text = "\n".join([
        "==PROF== Connected to process 7 (/usr/bin/python3)",
        '"ID","Process ID","Kernel Name","dram__bytes_read.sum","gpu__time_duration.sum",'
        '"dram__bytes_read.sum.per_second","launch__grid_size","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"',
        '"","","","Mbyte","usecond","Gbyte/second","","inst"',
        '"0","7","k","1,024.5","3.5","292.71","2,048","0.5 (0: 0.5)"',
        '"1","7","k","n/a","","1.5","",""',
    ])
    table = ncu.parse_raw_csv(text)
    a, b = table.rows
    assert a["ncu_dram__bytes_read_sum"] == pytest.approx(1.0245e9)
    assert a["ncu_gpu__time_duration_sum"] == pytest.approx(3500.0)
    assert a["ncu_dram__bytes_read_sum_per_second"] == pytest.approx(292.71e9)
    assert a["ncu_launch__grid_size"] == 2048.0
    assert a["ncu_smsp__average_warps_issue_stalled_wait_per_issue_active_ratio"] == 0.5
    assert b["ncu_dram__bytes_read_sum"] is None and b["ncu_gpu__time_duration_sum"] is None
    assert table.units == {"ncu_dram__bytes_read_sum": "byte", "ncu_gpu__time_duration_sum": "nsecond",
                           "ncu_dram__bytes_read_sum_per_second": "byte/second", "ncu_launch__grid_size": "",
                           "ncu_smsp__average_warps_issue_stalled_wait_per_issue_active_ratio": "inst"}
    assert a["nvtx"] is None


def test_parse_raw_csv_rejects_other_pages():
    with pytest.raises(GpuprofError, match="--page raw"):
        ncu.parse_raw_csv('"ID","Section Name","Metric Name","Metric Value"\n"0","SOL","x","1"\n')
    assert ncu.parse_raw_csv("==WARNING== No kernels were profiled.\n").rows == []


@pytest.mark.parametrize("text, value", [("1,234.5", 1234.5), (" 7 ", 7.0), ("-2e3", -2000.0), ("158 (0: 158)", 158.0),
                                         ("n/a", None), ("", None)])
def test_parse_value(text, value):
    assert ncu.parse_value(text) == value


def test_nvtx_ranges_keep_colons_inside_range_names():
    cell = ('97844  "<default domain>:warmup:none:none:none:none:none:none"  '
            '"gpuprof:layer:0:attn:none:none:ARGB:ff0000ff:none:none"')
    assert ncu.nvtx_ranges(cell) == [("<default domain>", "warmup"), ("gpuprof", "layer:0:attn")]
    assert ncu.nvtx_ranges("") == [] and ncu.nvtx_ranges('1  "gpuprof:measure"') == [("gpuprof", "measure")]


LOG_ERRORS = {  # every log here, hand-made or recorded (tests/data/ncu/record.sh), by its suffix
    "-log-errperm.txt": "ERR_NVGPUCTRPERM",
    "-log-unknown-metric.txt": "does not know the metric",
    "-log-no-kernels.txt": "no kernel matched the NVTX filter 'gpuprof@measure/'",
}
LOGS = sorted(p for p in DATA.glob("*-log-*.txt"))


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.name)
def test_ncu_messages_become_one_sentence(log):
    message = next(m for suffix, m in LOG_ERRORS.items() if log.name.endswith(suffix))
    with pytest.raises(GpuprofError, match=message) as error:
        ncu.check_messages(log.read_text(), "gpuprof@measure/")
    assert "\n" not in str(error.value)


def test_unknown_metric_is_named():
    with pytest.raises(GpuprofError, match="metric sm__pipe_tensor_op_gmma_cycles_active.avg.pct"):
        ncu.check_messages((DATA / "handmade-log-unknown-metric.txt").read_text(), None)


def test_unknown_base_metric_is_named_not_its_regex():
    # ncu turns a base name into a regex over its rollups and reports that regex.
    with pytest.raises(GpuprofError, match=r"know the metric flop_count_sp on") as error:
        ncu.check_messages((DATA / "handmade-regex-log-unknown-metric.txt").read_text(), None)
    assert "regex" not in str(error.value)
    with pytest.raises(GpuprofError, match=r"metric dram__bytes_read.sum, dram__bytes on"):
        ncu.check_messages('==ERROR== Failed to find metric "dram__bytes_read.sum".\n'
                           "==ERROR== Failed to find metric regex:^dram__bytes\\.(sum|min|max|avg)$\n", None)


def test_other_ncu_errors_and_clean_logs():
    with pytest.raises(GpuprofError, match="ncu failed: Profiling failed because a driver resource"):
        ncu.check_messages("==ERROR== Profiling failed because a driver resource was unavailable.\n", None)
    with pytest.raises(GpuprofError, match="launched none"):
        ncu.check_messages("==WARNING== No kernels were profiled.\n", None)
    ncu.check_messages("==PROF== Connected to process 1\n==PROF== Disconnected from process 1\n", "x")


def test_find_ncu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setattr(ncu, "_CUDA_DEFAULT", str(tmp_path / "nowhere"))
    with pytest.raises(GpuprofError, match="`ncu` was not found"):
        ncu.find_ncu()
    binary = tmp_path / "cuda" / "bin" / "ncu"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert ncu.find_ncu() == str(binary)
    assert os.access(binary, os.X_OK)
