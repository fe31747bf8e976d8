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
