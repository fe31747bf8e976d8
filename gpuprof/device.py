"""What the GPU is, what software runs it, and the datasheet table used only where nothing was measured."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuprof.errors import GpuprofError, NoGPUError


@dataclass(frozen=True)
class GPUInfo:
    name: str
    sm_count: int
    memory_bytes: int
    l2_bytes: int
    driver: str | None
    cuda: str | None
    compute_capability: str
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None

    def manifest(self) -> dict:
        """The record contract's `gpu` object (extra keys are allowed there)."""
        return asdict(self)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def require_gpu(what: str = "this command") -> None:
    """Raise a one-sentence error when no CUDA GPU is visible."""
    if not cuda_available():
        raise NoGPUError(
            f"{what} needs an NVIDIA GPU, and none is visible here (torch.cuda.is_available() is False); "
            "run it on a machine with a CUDA GPU, or read committed results with `gpuprof report`."
        )


def use_triton_interpreter() -> None:
    """Run gpuprof's Triton kernels through Triton's CPU interpreter (for `--device cpu`).

    Triton fixes its mode when it is first imported. Without a GPU, `import gpuprof` has already chosen the
    interpreter; on a GPU machine it must be asked for before Triton loads, in the environment.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return
    if "triton" in sys.modules:
        raise GpuprofError(
            "Triton was already loaded for the GPU; start gpuprof with TRITON_INTERPRET=1 in the environment to "
            "run its Triton kernels on the CPU."
        )
    os.environ["TRITON_INTERPRET"] = "1"


def nvml_lookups(props) -> list[tuple[str, str]]:
    """(pynvml function, key) pairs that find CUDA device `props` in NVML, surest first.

    CUDA numbers devices fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and CUDA_VISIBLE_DEVICES renumbers
    them; NVML always numbers every device in PCI order. So the UUID (or PCI bus id) names the same GPU in both.
    """
    lookups = []
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        # torch prints the bare 8-4-4-4-12 hex form; NVML wants it prefixed (GPU-..., or MIG-... for an instance).
        lookups.append(("nvmlDeviceGetHandleByUUID", uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"))
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain, dev = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
        lookups.append(("nvmlDeviceGetHandleByPciBusId", f"{domain:08x}:{bus:02x}:{dev:02x}.0"))
    return lookups


def cuda_device_props(index: int):
    """torch's properties of CUDA device `index`; None where CUDA is not available."""
    if not cuda_available():
        return None
    import torch

    return torch.cuda.get_device_properties(index)


def nvml_handle(nvml, index: int, props=None):
    """NVML's handle for CUDA device `index` (`props`: its torch properties): by UUID, else PCI bus id, else index.

    The index is the last resort: it names the same GPU only with one GPU or CUDA_DEVICE_ORDER=PCI_BUS_ID.
    """
    props = cuda_device_props(index) if props is None else props
    for name, key in nvml_lookups(props) if props is not None else []:
        lookup = getattr(nvml, name, None)
        if lookup is None:
            continue
        try:
            return lookup(key)
        except nvml.NVMLError:
            continue  # an older driver, or a MIG instance NVML does not hand out this way: try the next key
    return nvml.nvmlDeviceGetHandleByIndex(index)


def current_cuda_index() -> int:
    """The CUDA device torch runs on now (0 without CUDA)."""
    if not cuda_available():
        return 0
    import torch

    return torch.cuda.current_device()


def _nvml_details(index: int) -> dict:
    """Driver and clocks from NVML; empty where NVML is absent or refuses."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        h = nvml_handle(pynvml, index)
        out: dict = {"driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        for key, fn, clock in (
            ("sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM),
            ("mem_clock_mhz", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_MEM),
            ("max_sm_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM),
            ("max_mem_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_MEM),
        ):
            try:
                out[key] = int(fn(h, clock))
            except pynvml.NVMLError:
                out[key] = None
        return out
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def info(index: int | None = None) -> GPUInfo | None:
    """Describe the current (or given) CUDA device; None where no GPU is visible."""
    if not cuda_available():
        return None
    import torch

    index = torch.cuda.current_device() if index is None else index
    p = torch.cuda.get_device_properties(index)
    nv = _nvml_details(index)
    return GPUInfo(
        name=p.name,
        sm_count=p.multi_processor_count,
        memory_bytes=p.total_memory,
        l2_bytes=getattr(p, "L2_cache_size", 0),
        driver=nv.get("driver"),
        cuda=torch.version.cuda,
        compute_capability=f"{p.major}.{p.minor}",
        sm_clock_mhz=nv.get("sm_clock_mhz"),
        mem_clock_mhz=nv.get("mem_clock_mhz"),
        max_sm_clock_mhz=nv.get("max_sm_clock_mhz"),
        max_mem_clock_mhz=nv.get("max_mem_clock_mhz"),
    )


# Distribution names of the packages the record contract names under `versions`.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "triton": ("triton",),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
    "nvtx": ("nvtx",),
    "pynvml": ("nvidia-ml-py", "pynvml"),
    "gpuprof": ("gpuprof",),
}


def software_versions() -> dict[str, str | None]:
    """The `versions` object of the record contract: installed versions, None where absent."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dists in _DISTRIBUTIONS.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if out["gpuprof"] is None:
        from gpuprof import __version__

        out["gpuprof"] = __version__
    return out


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the gpuprof checkout (with `-dirty` when it has changes); None outside git, and None for an
    installed copy that merely sits inside some other repository (a virtual environment in a project)."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or not _is_gpuprof_checkout(Path(top.stdout.strip())):
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _is_gpuprof_checkout(toplevel: Path) -> bool:
    """Whether a repository's top level is gpuprof's own: its setup.py names the gpuprof distribution."""
    try:
        return 'name="gpuprof"' in (toplevel / "setup.py").read_text()
    except OSError:
        return False


def gpu_slug(name: str) -> str:
    """A folder name for a GPU: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


GiB = 1 << 30

# Where CUDA's total for a GPU was not found, the advisor plans with the marketed size less this margin. CUDA
# reports less than the marketed size (79.11 GiB on an "80GB" H100, 23.64 GiB on a "24GB" RTX 4090), and GDDR
# cards lose more: nvidia-smi shows an L4 ("24GB") at 23034 MiB, 6% under 24 GiB
# (https://github.com/modal-labs/modal-client/pull/2797), and CUDA's total is below nvidia-smi's. 10% covers these.
DATASHEET_MEMORY_MARGIN = 0.10


@dataclass(frozen=True)
class Datasheet:
    """Vendor figures: dense (no sparsity) tensor-core rates, the memory bandwidth and the memory size."""

    name: str
    pattern: str  # a regular expression searched in the lower-cased device name
    memory_gbps: float
    fp16_tflops: float
    bf16_tflops: float
    fp32_tflops: float
    source: str
    memory_bytes: int = 0  # the marketed size: the vendor's "GB" read as GiB, as HBM stacks are (80GB = 5 x 16 GiB)
    # The total CUDA reports (torch's total_memory, what vLLM's --gpu-memory-utilization multiplies), as a torch
    # out-of-memory message printed it (to 0.01 GiB), and where that was seen; 0 and "" where none was found.
    cuda_memory_bytes: int = 0
    cuda_memory_seen_at: str = ""

    def planning_memory(self) -> tuple[int, str]:
        """(bytes, where from) for planning without the GPU: CUDA's total where seen, else the margined datasheet."""
        if self.cuda_memory_bytes:
            seen = f"{self.cuda_memory_bytes / GiB:.2f} GiB, as seen at {self.cuda_memory_seen_at}"
            return self.cuda_memory_bytes, f"{self.name}: the total CUDA reports, {seen}"
        planned = int(self.memory_bytes * (1 - DATASHEET_MEMORY_MARGIN))
        return planned, (f"datasheet: {self.name}, {self.memory_bytes / GiB:.0f} GiB less a "
                         f"{DATASHEET_MEMORY_MARGIN:.0%} margin (an assumption: the total CUDA reports for this GPU "
                         "was not found, and it is less than the marketed size)")


def _seen_gib(gib: float) -> int:
    """A total printed in GiB with two decimals, in bytes (rounded down to a whole MiB)."""
    return int(gib * 1024) << 20


# Only where nothing was measured; always reported with source "datasheet". The CUDA totals were read from torch
# out-of-memory messages ("GPU 0 has a total capacity of X GiB") in public issues that name the GPU; where several
# were seen for one product, the smallest is kept (planning on a larger total than the card has overcommits it).
_H100_SXM = (_seen_gib(79.11), "https://github.com/vllm-project/vllm/issues/27508 (NVIDIA H100 80GB HBM3)")
# A100 80GB: 79.25 GiB on "an A100" with 80GB (SXM or PCIe not stated); 79.35 GiB also seen at
# https://github.com/OSU-NLP-Group/TableLlama/issues/10.
_A100_80 = (_seen_gib(79.25), "https://github.com/HiDream-ai/VAREdit/issues/6 (an A100 80GB, SXM or PCIe not stated)")
# A100 40GB: 39.50 GiB on "one A100" (variant not stated); 39.59 GiB also seen at
# https://github.com/meta-llama/llama/issues/52.
_A100_40 = (_seen_gib(39.50), "https://github.com/TianheWu/CoSeR/issues/10 (an A100 40GB, SXM or PCIe not stated)")
# RTX 4090: 23.64 GiB; 23.65 and 23.68 GiB also seen (https://github.com/MotrixLab/AiOS/issues/29,
# https://github.com/zai-org/CogVideo/issues/36).
_RTX_4090 = (_seen_gib(23.64), "https://github.com/ali-vilab/VGen/issues/104 (RTX 4090 24GB)")
DATASHEETS: tuple[Datasheet, ...] = (
    Datasheet("H100 SXM5 80GB", r"\bh100\b.*\bhbm3\b", 3350, 989.4, 989.4, 66.9, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)", 80 << 30, *_H100_SXM),
    # H100 PCIe, H200, L40S and L4: no CUDA total found; planned with DATASHEET_MEMORY_MARGIN.
    Datasheet("H100 PCIe 80GB", r"\bh100\b.*\bpcie\b", 2000, 756.5, 756.5, 51.2, "NVIDIA H100 Tensor Core GPU datasheet (PCIe)", 80 << 30),
    Datasheet("H200 SXM 141GB", r"\bh200\b", 4800, 989.4, 989.4, 66.9, "NVIDIA H200 Tensor Core GPU datasheet (SXM)", 141 << 30),
    # A100: the PCIe cards name themselves with "PCIe" ("NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB"), the SXM
    # modules do not; the 80GB PCIe card has slower memory than the 80GB SXM module.
    Datasheet("A100 SXM4 80GB", r"^(?!.*\bpcie\b).*\ba100\b.*\b80gb\b", 2039, 312.0, 312.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)", 80 << 30, *_A100_80),
    Datasheet("A100 PCIe 80GB", r"^(?=.*\bpcie\b).*\ba100\b.*\b80gb\b", 1935, 312.0, 312.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet (80GB PCIe)", 80 << 30, *_A100_80),
    Datasheet("A100 SXM4 40GB", r"^(?!.*\bpcie\b).*\ba100\b.*\b40gb\b", 1555, 312.0, 312.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet (40GB SXM)", 40 << 30, *_A100_40),
    Datasheet("A100 PCIe 40GB", r"^(?=.*\bpcie\b).*\ba100\b.*\b40gb\b", 1555, 312.0, 312.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet (40GB PCIe)", 40 << 30, *_A100_40),
    Datasheet("L40S", r"\bl40s\b", 864, 362.05, 362.05, 91.6, "NVIDIA L40S GPU datasheet", 48 << 30),
    Datasheet("L4", r"\bl4\b", 300, 121.0, 121.0, 30.3, "NVIDIA L4 Tensor Core GPU datasheet", 24 << 30),
    Datasheet("RTX 4090", r"\b4090\b", 1008, 165.2, 165.2, 82.6, "NVIDIA Ada GPU architecture whitepaper (GeForce RTX 4090, FP32 accumulate)", 24 << 30, *_RTX_4090),
)


def datasheet_for(name: str) -> Datasheet | None:
    """The datasheet entry whose pattern matches the device name; None for GPUs not in the table."""
    lowered = name.lower()
    return next((d for d in DATASHEETS if re.search(d.pattern, lowered)), None)
