import json
import math
import shutil

import pytest

from gpuprof import records
from gpuprof.errors import GpuprofError
from gpuprof.records import POINT_KEYS, Run, add_work, new_point, read_points, write_csv

MANIFEST = {"gpu": None, "versions": {}, "git_commit": None, "command": "gpuprof x", "started_at": "t", "peaks": None, "grid": {}}


def test_new_point_has_every_contract_key():
    p = new_point(kernel="gemv", impl="triton", status="ok")
    assert set(POINT_KEYS) <= set(p)
    assert p["batch"] is None and p["kernel"] == "gemv"


def test_new_point_rejects_unknown_status():
    with pytest.raises(ValueError):
        new_point(status="fine")


def test_add_work_derives_rates_and_percentages():
    p = new_point(dtype="bf16", bytes=3_000_000, flops=6_000_000, time_us=1.0)
    add_work(p, {"copy_gbps": 3000.0, "bf16_tflops": 600.0})
    assert p["intensity"] == 2.0
    assert p["gbps"] == pytest.approx(3000.0)  # 3 MB in 1 us
    assert p["tflops"] == pytest.approx(6.0)
    assert p["pct_copy_bw"] == pytest.approx(100.0)
    assert p["pct_peak_flops"] == pytest.approx(1.0)


def test_add_work_without_timing_leaves_rates_empty():
    p = add_work(new_point(dtype="bf16", bytes=10, flops=0), {"copy_gbps": 1.0})
    assert p["gbps"] is None and p["intensity"] == 0.0


def test_run_roundtrip_and_resume(tmp_path):
    run = Run.create(tmp_path / "r", MANIFEST)
    run.append(new_point(kernel="copy", impl="torch", n=1, status="ok", time_us=math.nan))
    run.append(new_point(kernel="copy", impl="torch", n=2, status="oom", error="too big."))
    again = Run.open(tmp_path / "r")
    pts = again.points()
    assert [p["n"] for p in pts] == [1, 2]
    assert pts[0]["time_us"] is None  # NaN is written as null
    assert again.done(["kernel", "n"]) == {("copy", 1), ("copy", 2)}
    assert again.manifest()["command"] == "gpuprof x"


def test_create_refuses_existing_run(tmp_path):
    Run.create(tmp_path, MANIFEST)
    with pytest.raises(GpuprofError, match="choose a new --out directory, or delete the old one") as error:
        Run.create(tmp_path, MANIFEST)
    assert "--resume" not in str(error.value)  # only commands that can resume say so
    with pytest.raises(GpuprofError, match="already holds a run; pass --resume to finish it"):
        Run.create(tmp_path, MANIFEST, if_exists="pass --resume to finish it")


def test_open_refuses_non_run(tmp_path):
    with pytest.raises(GpuprofError, match="manifest.json"):
        Run.open(tmp_path)


def test_interrupted_last_line_is_skipped_and_repaired(tmp_path):
    run = Run.create(tmp_path, MANIFEST)
    run.append(new_point(kernel="copy", status="ok"))
    with open(run.points_path, "a") as f:
        f.write('{"kernel": "co')  # the process died mid-write
    assert len(run.points()) == 1
    run.repair()
    run.append(new_point(kernel="gemv", status="ok"))
    assert [p["kernel"] for p in run.points()] == ["copy", "gemv"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(GpuprofError, match=":2 is not a JSON object"):
        read_points(path)


def test_points_and_csv_are_read_by_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    run = Run.create(tmp_path, MANIFEST)
    for n in (1, 2, 3):
        run.append(new_point(kernel="copy", impl="torch", n=n, status="ok", time_us=float(n), extra_col=n * 10))
    df = pd.read_json(run.points_path, lines=True)
    assert list(df["n"]) == [1, 2, 3] and "extra_col" in df
    write_csv(run.points(), tmp_path / "p.csv")
    cdf = pd.read_csv(tmp_path / "p.csv")
    assert list(cdf.columns[: len(POINT_KEYS)]) == list(POINT_KEYS)
    assert list(cdf["extra_col"]) == [10, 20, 30]


def test_manifest_is_plain_json(tmp_path):
    run = Run.create(tmp_path, MANIFEST)
    assert json.loads(run.manifest_path.read_text()) == MANIFEST


def test_check_writable_refuses_in_one_sentence(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    records.check_writable(tmp_path / "new" / "deeper" / "p.csv", "--csv")  # folders to be made: fine
    records.check_writable(tmp_path, "--out", directory=True)
    with pytest.raises(GpuprofError, match=r"--csv .* is a directory; name a file\."):
        records.check_writable(tmp_path, "--csv")
    with pytest.raises(GpuprofError, match=r"--out .*f.txt is a file; name a directory\."):
        records.check_writable(a_file, "--out", directory=True)
    with pytest.raises(GpuprofError, match=r"f.txt is a file, not a directory"):
        records.check_writable(a_file / "p.csv", "--csv")
    with pytest.raises(GpuprofError, match=r"f.txt is a file, not a directory"):
        records.check_writable(a_file / "run", "--out", directory=True)


def test_failed_writes_are_one_sentence(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(GpuprofError, match=r"could not write .*p.csv: .*\.$"):
        records.write_csv([new_point(kernel="copy")], a_file / "p.csv")
    with pytest.raises(GpuprofError, match=r"could not write .*peaks.json"):
        records.write_json(a_file / "peaks.json", {})
    with pytest.raises(GpuprofError, match="could not write"):
        Run.create(a_file / "run", MANIFEST)
    run = Run.create(tmp_path / "run", MANIFEST)
    shutil.rmtree(run.path)  # the run directory removed under a running benchmark
    with pytest.raises(GpuprofError, match="could not write .*points.jsonl"):
        run.append(new_point(kernel="copy"))


def test_write_csv_makes_its_folder(tmp_path):
    records.write_csv([new_point(kernel="copy")], tmp_path / "new" / "p.csv")
    assert (tmp_path / "new" / "p.csv").read_text().startswith("kernel,")


@pytest.mark.parametrize("text, message", [
    ("{not json", r"manifest.json cannot be read as JSON \(JSONDecodeError\)"),
    ("[1, 2]", "manifest.json holds a JSON list, not the object a gpuprof manifest is"),
    ("\"a string\"", "manifest.json holds a JSON str"),
])
def test_damaged_or_foreign_manifest_is_one_sentence(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(GpuprofError, match=message):
        Run.open(tmp_path).manifest()


def test_binary_manifest_is_one_sentence(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GpuprofError, match=r"cannot be read as JSON \(UnicodeDecodeError\)"):
        Run.open(tmp_path).manifest()
