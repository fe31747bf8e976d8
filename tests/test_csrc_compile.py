"""Every CUDA kernel instantiation compiles with nvcc (sm_90a, sm_80) and NVRTC, with no spill and no stack.

nvcc needs no GPU; the builds are cached per content hash in the temp directory, so a second run is instant.
NVRTC is reached through cupy's bindings and needs libnvrtc and the CUDA headers, but no GPU either.
"""

from __future__ import annotations

import shutil

import pytest

from gpuprof.cuda import compile_check, source
from gpuprof.cuda.instances import INSTANCES

NVCC = shutil.which("nvcc")


def _nvrtc_reason() -> str | None:
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - cupy missing, or libnvrtc not loadable
        return f"NVRTC is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
    from gpuprof.cuda.runtime import cuda_include_dir

    if cuda_include_dir() is None:
        return "the CUDA headers NVRTC needs (cuda_fp16.h) are not found; set CUDA_PATH."
    return None


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile the CUDA sources")
def test_every_instantiation_compiles_with_nvcc_without_spills():
    reports = compile_check.check_all(compile_check.ARCHES, NVCC)
    expected = {(arch, name) for arch in compile_check.ARCHES for names in INSTANCES.values() for name in names}
    assert len(reports) == len(expected), compile_check.format_table(reports)
    if shutil.which("c++filt"):  # names are only comparable demangled
        assert {(r.arch, compile_check.short_name(r)) for r in reports} == expected
    problems = [f"{r.arch} {compile_check.short_name(r)}: {p}" for r in reports for p in r.problems()]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source_name", sorted(INSTANCES))
def test_every_instantiation_compiles_with_nvrtc_without_spills(source_name):
    reason = _nvrtc_reason()
    if reason:
        pytest.skip(reason)
    reports, lowered = compile_check.compile_with_nvrtc(source_name)
    assert set(lowered) == set(INSTANCES[source_name])
    assert {r.mangled for r in reports} == set(lowered.values())
    problems = [f"{compile_check.short_name(r)}: {p}" for r in reports for p in r.problems()]
    assert not problems, "\n".join(problems)


def test_parse_ptxas_flags_spills_and_stack_frames():
    log = """ptxas info    : Compiling entry function '_Z4goodv' for 'sm_90a'
ptxas info    : Function properties for _Z4goodv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3badv' for 'sm_90a'
ptxas info    : Function properties for _Z3badv
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
"""
    good, bad = compile_check.parse_ptxas(log, "nvcc")
    assert (good.registers, good.smem_bytes, good.problems()) == (40, 1024, [])
    assert bad.registers == 255 and len(bad.problems()) == 2


def test_nvcc_unit_references_every_instantiation():
    for source_name, names in INSTANCES.items():
        unit = compile_check.nvcc_unit(source_name)
        assert unit.startswith(f'#include "{source_name}"')
        assert all(f"&{name})" in unit for name in names)


def test_expanded_source_is_self_contained_with_line_markers():
    text = source.expanded("decode_attention.cu")
    assert '#include "common.cuh"' not in text
    assert "mma_rows_dot_32" in text  # from common.cuh
    assert f'#line 1 "{source.path("common.cuh")}"' in text
    assert f'"{source.path("decode_attention.cu")}"' in text
    assert "#include <cuda_fp16.h>" in text  # found by NVRTC through -I
    assert "ucontext" not in text  # the emulator stays out of GPU builds
