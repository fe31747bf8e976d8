"""Compile every kernel instantiation ahead of time and check ptxas's resource report.

`nvcc` (CI, no GPU needed) builds each csrc/ source for each architecture with `-Xptxas -v`; NVRTC (through
cupy, no GPU needed either) builds the same text the runtime builds. A kernel passes when ptxas reports no
spill and no stack frame: the kernels are written to keep everything in registers and shared memory.

    python -m gpuprof.cuda.compile_check            # nvcc, sm_90a and sm_80
    python -m gpuprof.cuda.compile_check --nvrtc    # NVRTC as well
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuprof.cuda import source
from gpuprof.cuda.instances import INSTANCES

ARCHES = ("sm_90a", "sm_80")
NVCC_FLAGS = ("-std=c++17", "-lineinfo", "-cubin", "-Xptxas", "-v")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class KernelReport:
    compiler: str  # "nvcc" or "nvrtc"
    arch: str
    mangled: str
    name: str = ""  # demangled, where c++filt is available
    registers: int = -1
    stack_bytes: int = -1
    spill_store_bytes: int = -1
    spill_load_bytes: int = -1
    smem_bytes: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.spill_store_bytes or self.spill_load_bytes:
            found.append(f"spills {self.spill_store_bytes} B stores / {self.spill_load_bytes} B loads")
        if self.stack_bytes:
            found.append(f"{self.stack_bytes} B stack frame")
        if self.registers < 0:
            found.append("no resource report")
        return found


def parse_ptxas(log: str, compiler: str) -> list[KernelReport]:
    """One report per entry function in a `ptxas -v` log (nvcc's stderr or NVRTC's program log)."""
    reports: list[KernelReport] = []
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            reports.append(KernelReport(compiler, m.group(2), m.group(1)))
        elif reports and (m := _FRAME.search(line)):
            r = reports[-1]
            r.stack_bytes, r.spill_store_bytes, r.spill_load_bytes = (int(g) for g in m.groups())
        elif reports and (m := _USED.search(line)):
            reports[-1].registers = int(m.group(1))
            if s := _SMEM.search(line):
                reports[-1].smem_bytes = int(s.group(1))
    _demangle(reports)
    return reports


def _demangle(reports: list[KernelReport]) -> None:
    tool = shutil.which("c++filt")
    if not tool or not reports:
        return
    names = subprocess.run([tool], input="\n".join(r.mangled for r in reports), capture_output=True, text=True)
    for r, name in zip(reports, names.stdout.splitlines()):
        r.name = name


def nvcc_unit(source_name: str) -> str:
    """A translation unit for nvcc: the source plus a host-side reference to every instantiation, which makes
    nvcc instantiate exactly the kernels NVRTC would (INSTANCES is the one list)."""
    refs = "".join(f"    reinterpret_cast<const void*>(&{name}),\n" for name in INSTANCES[source_name])
    return f'#include "{source_name}"\n\n__attribute__((used)) static const void* const kInstances[] = {{\n{refs}}};\n'


def _gencode(arch: str) -> str:
    number = arch.removeprefix("sm_")
    return f"-gencode=arch=compute_{number},code=sm_{number}"


def compile_with_nvcc(source_name: str, arch: str, nvcc: str = "nvcc") -> list[KernelReport]:
    """Reports of every instantiation in csrc/`source_name` built by nvcc for `arch` (cached by content)."""
    unit = nvcc_unit(source_name)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    key = source.digest(source.all_files_digest(), unit, arch, version, " ".join(NVCC_FLAGS))
    cached = Path(tempfile.gettempdir()) / "gpuprof-csrc-check" / f"{key}.json"
    if cached.exists():
        return [KernelReport(**r) for r in json.loads(cached.read_text())]
    with tempfile.TemporaryDirectory() as tmp:
        unit_path = Path(tmp) / f"check_{Path(source_name).stem}.cu"
        unit_path.write_text(unit)
        command = [nvcc, *NVCC_FLAGS, _gencode(arch), f"-I{source.CSRC_DIR}", "-o", str(Path(tmp) / "out.cubin")]
        result = subprocess.run(command + [str(unit_path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source_name} for {arch}:\n{result.stderr[-6000:]}")
    reports = parse_ptxas(result.stdout + result.stderr, "nvcc")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps([asdict(r) for r in reports]))
    return reports


def compile_with_nvrtc(source_name: str, arch: str = "sm_90") -> tuple[list[KernelReport], dict[str, str]]:
    """NVRTC build of the runtime's exact text: reports, and each name expression's lowered (mangled) name."""
    from cupy.cuda import nvrtc

    from gpuprof.cuda.runtime import nvrtc_options

    names = INSTANCES[source_name]
    program = nvrtc.createProgram(source.expanded(source_name), source_name, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        options = [*nvrtc_options(), f"-arch={arch}", "--ptxas-options=-v"]
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError:
            raise RuntimeError(f"NVRTC failed on {source_name}:\n{nvrtc.getProgramLog(program)[-6000:]}") from None
        lowered = {name: nvrtc.getLoweredName(program, name) for name in names}
        return parse_ptxas(nvrtc.getProgramLog(program), "nvrtc"), lowered
    finally:
        nvrtc.destroyProgram(program)


def check_all(arches: Sequence[str] = ARCHES, nvcc: str = "nvcc", jobs: int | None = None) -> list[KernelReport]:
    """nvcc reports for every source and architecture, built in parallel."""
    work = [(s, a) for s in INSTANCES for a in arches]
    with ThreadPoolExecutor(max_workers=jobs or min(len(work), os.cpu_count() or 1)) as pool:
        results = pool.map(lambda sa: compile_with_nvcc(sa[0], sa[1], nvcc), work)
        return [r for reports in results for r in reports]


def short_name(report: KernelReport) -> str:
    """`gpuprof::gemv_kernel<__half, 1>` rather than the full signature."""
    return report.name.split("(")[0].removeprefix("void ") if report.name else report.mangled


def format_table(reports: Sequence[KernelReport]) -> str:
    lines = [f"{'compiler':8} {'arch':7} {'regs':>4} {'smem':>6} {'stack':>5} {'spill':>5}  kernel"]
    for r in reports:
        spill = r.spill_store_bytes + r.spill_load_bytes
        lines.append(
            f"{r.compiler:8} {r.arch:7} {r.registers:4d} {r.smem_bytes:6d} {r.stack_bytes:5d} {spill:5d}  "
            f"{short_name(r)}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="sm_90a, sm_80, ... (default: sm_90a and sm_80)")
    parser.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    parser.add_argument("--nvrtc", action="store_true", help="also build with NVRTC (sm_90) through cupy")
    args = parser.parse_args(argv)
    if shutil.which(args.nvcc) is None:
        print(f"{args.nvcc} not found: cannot compile the CUDA sources.", file=sys.stderr)
        return 1
    reports = check_all(args.arch or ARCHES, args.nvcc)
    expected = sum(len(v) for v in INSTANCES.values()) * len(args.arch or ARCHES)
    if args.nvrtc:
        for name in INSTANCES:
            reports += compile_with_nvrtc(name)[0]
        expected += sum(len(v) for v in INSTANCES.values())
    print(format_table(reports))
    bad = [(r, p) for r in reports for p in r.problems()]
    for r, problem in bad:
        print(f"FAIL {r.compiler} {r.arch} {short_name(r)}: {problem}", file=sys.stderr)
    if len(reports) != expected:
        print(f"FAIL expected {expected} kernel reports, ptxas gave {len(reports)}", file=sys.stderr)
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
