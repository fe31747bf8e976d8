import pytest

from gpuprof import device
from gpuprof.errors import GpuprofError, NoGPUError


@pytest.mark.parametrize(
    "name, slug",
    [("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"), ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"), ("", "unknown-gpu")],
)
def test_gpu_slug(name, slug):
    assert device.gpu_slug(name) == slug


@pytest.mark.parametrize(
    "name, entry",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM5 80GB"),
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB"),
        ("NVIDIA H200", "H200 SXM 141GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA L40", None),
        ("Tesla T4", None),
    ],
)
def test_datasheet_lookup(name, entry):
    found = device.datasheet_for(name)
    assert (found.name if found else None) == entry


def test_every_datasheet_entry_names_its_source():
    assert all(d.source and d.memory_gbps > 0 and d.bf16_tflops > 0 for d in device.DATASHEETS)


def test_software_versions_lists_the_contract_keys():
    v = device.software_versions()
    assert set(v) == {"python", "torch", "triton", "cupy", "nvtx", "pynvml", "gpuprof"}
    assert v["torch"] and v["gpuprof"]


def test_without_gpu_info_is_none_and_require_gpu_says_so(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert device.info() is None
    with pytest.raises(NoGPUError, match="needs an NVIDIA GPU"):
        device.require_gpu("gpuprof peaks")


@pytest.mark.gpu
def test_info_on_a_gpu():
    gpu = device.info()
    assert gpu.sm_count > 0 and gpu.memory_bytes > 0 and gpu.l2_bytes > 0


def test_use_triton_interpreter_sets_the_switch(monkeypatch):
    import sys

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "triton"})
    device.use_triton_interpreter()
    import os

    assert os.environ["TRITON_INTERPRET"] == "1"


def test_use_triton_interpreter_refuses_once_triton_is_loaded(monkeypatch):
    import triton  # noqa: F401

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(GpuprofError, match="TRITON_INTERPRET=1"):
        device.use_triton_interpreter()


def test_importing_gpuprof_without_a_gpu_chooses_the_interpreter():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    code = "import os, torch, gpuprof; print(os.environ.get('TRITON_INTERPRET'), torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    mode, has_gpu = out.split()
    assert mode == ("None" if has_gpu == "True" else "1")
