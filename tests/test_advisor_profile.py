"""Reading measured serving tables: formats, column names, repeats, and every malformed input."""

import json

import pytest

from gpuprof.advisor.profile import read_profile
from gpuprof.errors import GpuprofError

VLLM_LIKE = [
    {"max_num_seqs": 1, "output_throughput": 90.0, "mean_itl_ms": 11.0, "mean_ttft_ms": 30.0},
    {"max_num_seqs": 8, "output_throughput": 650.0, "mean_itl_ms": 12.3, "mean_ttft_ms": 35.0},
    {"max_num_seqs": 64, "output_throughput": 3100.0, "mean_itl_ms": 20.6, "mean_ttft_ms": 80.0},
]


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_with_common_names(tmp_path):
    path = write_csv(tmp_path / "runs.csv", ["batch_size", "throughput", "tpot_ms", "kv_cache_usage"],
                     [[1, 100, 10, 0.01], [4, 380, 10.5, 0.05], [16, 1200, 13.3, 0.2]])
    table = read_profile(path)
    assert table.columns == {"batch": "batch_size", "throughput": "throughput", "itl": "tpot_ms",
                             "kv_cache_usage": "kv_cache_usage"}
    assert [(p.batch, p.tokens_per_s, p.itl_ms) for p in table.points] == [(1, 100, 10), (4, 380, 10.5), (16, 1200, 13.3)]
    assert table.extra[16] == {"kv_cache_usage": 0.2}


@pytest.mark.parametrize("wrap", [lambda rows: rows, lambda rows: {"runs": rows}, lambda rows: {"results": rows}])
def test_json_list_or_object_holding_one(tmp_path, wrap):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(wrap(VLLM_LIKE)))
    table = read_profile(path)
    assert table.columns["batch"] == "max_num_seqs" and table.columns["throughput"] == "output_throughput"
    assert [p.batch for p in table.points] == [1, 8, 64] and table.extra[64]["ttft_ms"] == 80.0


def test_jsonl_points_keep_only_ok_rows(tmp_path):
    rows = [{"kernel": "decode_step", "batch": b, "tokens_per_s": 100.0 * b, "step_ms": 10.0, "status": "ok"} for b in (1, 2)]
    rows.append({"kernel": "decode_step", "batch": 512, "tokens_per_s": None, "step_ms": None, "status": "oom"})
    path = tmp_path / "points.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = read_profile(path)
    assert [p.batch for p in table.points] == [1, 2] and table.columns["itl"] == "step_ms"
    assert "1 rows whose status is not ok were left out" in table.notes


def test_output_throughput_is_preferred_over_total(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["batch", "total_token_throughput", "output_throughput"], [[1, 500, 100], [2, 900, 190]])
    assert read_profile(path).columns["throughput"] == "output_throughput"


def test_named_columns_override_the_guess(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["batch", "output_throughput", "my_tps", "p50_itl"], [[1, 1, 100, 9], [2, 2, 190, 9.5]])
    table = read_profile(path, throughput_column="my_tps", itl_column="P50_ITL")
    assert [p.tokens_per_s for p in table.points] == [100, 190] and table.points[1].itl_ms == 9.5


def test_repeated_batches_use_the_median(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["batch", "throughput"], [[8, 700], [8, 820], [8, 760], [1, 100]])
    table = read_profile(path)
    assert [(p.batch, p.tokens_per_s) for p in table.points] == [(1, 100), (8, 760)]
    assert "batch 8: 3 rows, their medians used" in table.notes


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", "", "holds no table rows"),
        ("header.csv", "batch,throughput\n", "holds no table rows"),
        ("bad.json", "{not json", "is not valid JSON"),
        ("object.json", '{"batch": 1}', "holds no table rows"),
        ("scalars.json", "[1, 2]", "holds no table rows"),
        ("nobatch.csv", "concurrency_level,throughput\n1,100\n", "has no batch column"),
        ("notput.csv", "batch,latency\n1,100\n", "has no throughput column"),
        ("text.csv", "batch,throughput\n1,fast\n", "row 1: throughput 'fast' is not a number"),
        ("frac.csv", "batch,throughput\n1.5,100\n", "row 1: the batch size must be a positive whole number"),
        ("zero.csv", "batch,throughput\n0,100\n", "row 1: the batch size must be a positive whole number"),
        ("neg.csv", "batch,throughput\n1,-100\n", "row 1: the throughput must be a positive number"),
        ("gap.csv", "batch,throughput,itl_ms\n1,100,10\n2,190,\n", "row 2: the inter-token latency \\(itl_ms\\) must be"),
        ("inf.csv", "batch,throughput\n1,inf\n", "row 1: throughput 'inf' is not a finite number"),
        ("nan.csv", "batch,throughput,itl_ms\n1,100,nan\n", "row 1: itl_ms 'nan' is not a finite number"),
        ("nanbatch.csv", "batch,throughput\n1,100\nNaN,200\n", "row 2: batch 'NaN' is not a finite number"),
        ("inf.json", '[{"batch": 1, "throughput": 100, "ttft_ms": Infinity}]', "row 1: ttft_ms inf is not a finite"),
    ],
)
def test_malformed_tables_are_one_sentence(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GpuprofError, match=message):
        read_profile(path)


def test_missing_file(tmp_path):
    with pytest.raises(GpuprofError, match="no profile file at"):
        read_profile(tmp_path / "nope.csv")


def test_unknown_named_column(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["batch", "throughput"], [[1, 100]])
    with pytest.raises(GpuprofError, match="has no column 'tps'; its columns are batch, throughput"):
        read_profile(path, throughput_column="tps")
