import json

import pytest

from gpuprof import peaks
from gpuprof.errors import GpuprofError

H100 = "NVIDIA H100 80GB HBM3"


def test_datasheet_fallback_is_labelled(tmp_path):
    p = peaks.load(H100, root=tmp_path)
    assert p["source"] == "datasheet" and p["copy_gbps"] == 3350 and "datasheet" in p["datasheet"]


def test_measured_file_wins(tmp_path):
    path = peaks.default_path(H100, tmp_path)
    path.parent.mkdir(parents=True)
    measured = {k: 1.0 for k in peaks.PEAK_KEYS}
    path.write_text(json.dumps({"peaks": measured}))
    p = peaks.load(H100, root=tmp_path)
    assert p["copy_gbps"] == 1.0 and p["source"].startswith("measured")


def test_unknown_gpu_without_measurement(tmp_path):
    with pytest.raises(GpuprofError, match="gpuprof peaks"):
        peaks.load("Tesla T4", root=tmp_path)


@pytest.mark.parametrize("content, match", [("{", "not a peaks file"), ('{"peaks": {"copy_gbps": 1}}', "lacks")])
def test_bad_peaks_file(tmp_path, content, match):
    path = tmp_path / "peaks.json"
    path.write_text(content)
    with pytest.raises(GpuprofError, match=match):
        peaks.load(H100, path=path)


def test_explicit_missing_path(tmp_path):
    with pytest.raises(GpuprofError, match="no peaks file"):
        peaks.load(H100, path=tmp_path / "nope.json")


@pytest.mark.gpu
def test_measure_quick_on_gpu():
    from gpuprof.device import info

    result = peaks.measure(info(), "test", None, copy_bytes=1 << 28, matmul=2048)
    assert all(result["peaks"][k] > 0 for k in peaks.PEAK_KEYS)
    assert result["peaks"]["source"] == "measured"


def _quick_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"peaks": {**{k: 1.0 for k in peaks.PEAK_KEYS}, "source": "measured", "quick": True}}))


def test_a_quick_peaks_file_is_never_the_default(tmp_path):
    _quick_file(peaks.default_path(H100, tmp_path, quick=True))
    assert peaks.default_path(H100, tmp_path, quick=True).name == "peaks-quick.json"
    assert peaks.load(H100, root=tmp_path)["source"] == "datasheet"


def test_a_quick_peaks_file_passed_explicitly_is_labelled_rough(tmp_path):
    path = tmp_path / "peaks-quick.json"
    _quick_file(path)
    p = peaks.load(H100, path=path)
    assert p["quick"] is True and "quick rough check" in p["source"] and str(path) in p["source"]


def _fake_gpu(monkeypatch):
    """`gpuprof peaks` on a pretend H100; returns what measure was asked."""
    from gpuprof.cli import peaks as cli_peaks
    from gpuprof.device import GPUInfo

    gpu = GPUInfo(name=H100, sm_count=132, memory_bytes=80 << 30, l2_bytes=50 << 20, driver=None, cuda=None,
                  compute_capability="9.0")
    asked = []

    def fake_measure(gpu, command, commit, quick=False, progress=None, **size):
        asked.append((quick, size))
        found = {**{k: 2.0 for k in peaks.PEAK_KEYS}, "source": "measured", **({"quick": True} if quick else {})}
        return {"peaks": found, "repeatability": {"diff_pct": 0.1}}

    monkeypatch.setattr(cli_peaks, "require_gpu", lambda what: None)
    monkeypatch.setattr(cli_peaks, "info", lambda: gpu)
    monkeypatch.setattr(cli_peaks.peaks_lib, "measure", fake_measure)
    return asked


def _cli(*args):
    from click.testing import CliRunner

    from gpuprof.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_peaks_quick_writes_beside_the_full_ceilings(tmp_path, monkeypatch):
    asked = _fake_gpu(monkeypatch)
    monkeypatch.chdir(tmp_path)
    full = peaks.default_path(H100)
    full.parent.mkdir(parents=True)
    full.write_text("the full ceilings")
    r = _cli("peaks", "--quick")
    assert r.exit_code == 0, r.output
    assert full.read_text() == "the full ceilings" and asked == [(True, {"copy_bytes": 1 << 28, "matmul": 4096})]
    assert json.loads(peaks.default_path(H100, quick=True).read_text())["peaks"]["quick"] is True


def test_cli_peaks_refuses_an_unwritable_out_before_measuring(tmp_path, monkeypatch):
    asked = _fake_gpu(monkeypatch)
    r = _cli("peaks", "--out", str(tmp_path))
    assert r.exit_code == 1 and "is a directory; name a file." in r.output and "Traceback" not in r.output
    assert asked == []
