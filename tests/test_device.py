import re
import subprocess
import types

import pynvml
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
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
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
    # the answer must not hang on the table's order: no other entry matches the name too
    assert len([d for d in device.DATASHEETS if re.search(d.pattern, name.lower())]) == (1 if entry else 0)


def test_a100_80gb_pcie_has_its_own_bandwidth():
    assert device.datasheet_for("NVIDIA A100 80GB PCIe").memory_gbps == 1935
    assert device.datasheet_for("NVIDIA A100-SXM4-80GB").memory_gbps == 2039


def _git_repo(path, setup_name):
    path.mkdir(parents=True)
    (path / "setup.py").write_text(f'setup(name="{setup_name}")\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "-C", str(path), "add", "setup.py"], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-qm", "x"], check=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_git_commit_only_of_gpuprofs_own_repository(tmp_path):
    head = _git_repo(tmp_path / "gpuprof", "gpuprof")
    assert device.git_commit(tmp_path / "gpuprof") == head
    _git_repo(tmp_path / "project", "someone-elses-app")
    installed = tmp_path / "project" / ".venv" / "lib" / "site-packages"  # gpuprof installed inside that project
    installed.mkdir(parents=True)
    assert device.git_commit(installed) is None
    assert device.git_commit(tmp_path) is None  # no repository at all


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


class _Uuid:
    """Like torch's _CUuuid: prints as bare 8-4-4-4-12 hex."""

    def __str__(self):
        return "58f2b1a4-0c1d-4e2f-9a3b-0123456789ab"


def _nvml_with(by_uuid=None, by_bus=None):
    """A pynvml stand-in whose NVML knows GPUs by UUID and bus id; index i gives 'index-i'."""

    def find(table):
        def lookup(key):
            if table is None or key not in table:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return table[key]
        return lookup

    return types.SimpleNamespace(NVMLError=pynvml.NVMLError, nvmlDeviceGetHandleByUUID=find(by_uuid),
                                 nvmlDeviceGetHandleByPciBusId=find(by_bus),
                                 nvmlDeviceGetHandleByIndex=lambda i: f"index-{i}")


def test_nvml_lookups_from_torch_properties():
    props = types.SimpleNamespace(uuid=_Uuid(), pci_bus_id=0x65, pci_device_id=0, pci_domain_id=0)
    assert device.nvml_lookups(props) == [
        ("nvmlDeviceGetHandleByUUID", "GPU-58f2b1a4-0c1d-4e2f-9a3b-0123456789ab"),
        ("nvmlDeviceGetHandleByPciBusId", "00000000:65:00.0"),
    ]
    already = types.SimpleNamespace(uuid="MIG-1234")  # no PCI fields on older torch
    assert device.nvml_lookups(already) == [("nvmlDeviceGetHandleByUUID", "MIG-1234")]


def test_nvml_handle_is_the_cuda_devices_not_nvmls_same_index():
    props = types.SimpleNamespace(uuid=_Uuid(), pci_bus_id=0x65, pci_device_id=0, pci_domain_id=0)
    uuid, bus = "GPU-58f2b1a4-0c1d-4e2f-9a3b-0123456789ab", "00000000:65:00.0"
    assert device.nvml_handle(_nvml_with(by_uuid={uuid: "nvml-3"}), 0, props) == "nvml-3"
    assert device.nvml_handle(_nvml_with(by_bus={bus: "nvml-2"}), 0, props) == "nvml-2"
    assert device.nvml_handle(_nvml_with(), 1, props) == "index-1"
    assert device.nvml_handle(_nvml_with(), 1, types.SimpleNamespace()) == "index-1"


def test_nvml_details_ask_nvml_for_the_cuda_device(monkeypatch):
    asked = []
    monkeypatch.setattr(device, "cuda_device_props", lambda i: types.SimpleNamespace(uuid="GPU-abc"))
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", lambda u: asked.append(u) or "h")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: pytest.fail("looked up by index"))
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "550.54")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetClockInfo", lambda h, c: 1000)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMaxClockInfo", lambda h, c: 2000)
    assert device._nvml_details(1)["driver"] == "550.54" and asked == ["GPU-abc"]
