"""What our Triton kernels compile to on a GPU architecture, read on any machine (no GPU needed).

Triton compiles a kernel to machine code (its own ptxas) without touching a driver, so the questions that cost no
device time can be answered here and in CI, from the SASS and resource usage that `cuobjdump` reads out of the
cubin: are the global loads 16 bytes wide (`LDG.E.128`, or `LDGSTS.E.BYPASS.128` where Triton pipelines operands
through shared memory), does anything go to local memory (`LDL`/`STL`, spills),
how many registers. Each case is the configuration the launcher plans by default for
a real shape (`gpuprof.ops`), compiled with the alignment Triton would see at launch (pointers and strides
divisible by 16).

Run it with Triton in compiler mode, in its own process (Triton fixes interpreter or compiler mode when imported):

    TRITON_INTERPRET=0 python -m gpuprof.triton_check [--json]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


ARCH = 90  # Hopper, the GPU gpuprof's targets are stated for


@dataclass
class Case:
    """One kernel in one planned configuration."""

    name: str
    kernel: object  # a triton.JITFunction
    pointers: Mapping[str, str]  # pointer argument -> Triton element type ("bf16", "fp32", "i32")
    constexprs: Mapping[str, object]
    num_warps: int
    num_stages: int
    floats: tuple[str, ...] = ()  # scalar arguments that are floats; every other scalar is an i32
    unaligned: tuple[str, ...] = ()  # i32 arguments not known to be multiples of 16 (lengths, counts)
    expects_wide_loads: bool = True  # False for a kernel moving a few bytes per thread


@dataclass
class CodegenReport:
    name: str
    wide_loads: int  # 16-byte global loads in the SASS (LDG.E.128, LDGSTS.E.BYPASS.128)
    narrow_loads: int  # other global loads
    local_memory: int  # LDL / STL instructions in the SASS
    registers: int
    local_bytes: int  # local memory per thread (spills, arrays indexed at run time)
    stack_bytes: int
    expects_wide_loads: bool = True
    problems: list[str] = field(default_factory=list)


def compile_cubin(case: Case, arch: int = ARCH) -> bytes:
    """The case's machine code for sm_<arch>, compiled without a GPU (Triton runs its own ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature, attrs = {}, {}
    for i, name in enumerate(case.kernel.arg_names):
        if name in case.constexprs:
            signature[name] = "constexpr"
        elif name in case.pointers:
            signature[name] = "*" + case.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in case.floats else "i32"
            if name not in case.floats and name not in case.unaligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=case.kernel, signature=signature, constexprs=dict(case.constexprs),
                                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    return compiled.asm["cubin"]


def _cuobjdump(*args: str) -> str:
    """Run the cuobjdump Triton ships (or one on PATH) and return its output."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    if not tool:
        raise RuntimeError("no cuobjdump found (neither Triton's own nor one on PATH).")
    result = subprocess.run([tool, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args[:-1])} failed: {result.stderr.strip()[-1000:]}")
    return result.stdout


def inspect_case(case: Case, arch: int = ARCH) -> CodegenReport:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compile_cubin(case, arch))
        sass = _cuobjdump("-sass", path)
        usage = _cuobjdump("-res-usage", path)
    # LDG: global to registers; LDGSTS: asynchronous global to shared copy (how Triton pipelines tl.dot operands)
    loads = re.findall(r"\b(?:LDG|LDGSTS)\.[\w.]*", sass)
    wide = sum(1 for op in loads if ".128" in op)
    local = len(re.findall(r"\b(?:LDL|STL)\b", sass))
    registers, stack, local_bytes = (int(re.search(rf"\b{key}:(\d+)", usage).group(1))
                                     for key in ("REG", "STACK", "LOCAL"))
    report = CodegenReport(case.name, wide, len(loads) - wide, local, registers, local_bytes, stack,
                           case.expects_wide_loads)
    if not wide and case.expects_wide_loads:
        report.problems.append("no 16-byte global loads (LDG/LDGSTS .128)")
    if local or local_bytes or stack:
        report.problems.append(f"local memory: {local} LDL/STL, {local_bytes} B local, {stack} B stack")
    return report


def default_cases() -> list[Case]:
    """The planned default configuration of each kernel on the shapes the issues target (H100: 132 SMs)."""
    from gpuprof.kernels import decode_attention as attn
    from gpuprof.kernels import gemv as gv
    from gpuprof.ops.attention import AttentionShape, _candidates
    from gpuprof.ops.gemv import gemv_candidates

    sms = 132
    cases = []
    for m, n, k in ((1, 14336, 4096), (16, 4096, 4096)):
        c = gemv_candidates(m, n, k, sms)[0]
        cases.append(Case(
            f"gemv m={m} n={n} k={k} bf16 {c}", gv._gemv_kernel,
            {"x_ptr": "bf16", "w_ptr": "bf16", "bias_ptr": "bf16", "out_ptr": "bf16", "partial_ptr": "fp32",
             "arrivals_ptr": "i32"},
            {"HAS_BIAS": False, "SPLIT_K": c.split_k, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n,
             "BLOCK_K": c.block_k, "FP32_OPERANDS": False},
            c.num_warps, c.num_stages, unaligned=("M",),
        ))
    for batch, ctx, hq, hkv, d in ((64, 4096, 32, 8, 128), (1, 32768, 32, 8, 128), (32, 2048, 32, 32, 128)):
        shape = AttentionShape(batch=batch, q_heads=hq, kv_heads=hkv, head_dim=d, page_size=16, capacity=ctx,
                               num_pages=batch * ctx // 16)
        c = _candidates(shape, None, sms)[0]
        block_g = attn.group_tile(hq // hkv)
        cases.append(Case(
            f"attention B={batch} L={ctx} Hq={hq} Hkv={hkv} D={d} page 16 bf16 {c}", attn._attend_split_kernel,
            {"q_ptr": "bf16", "k_ptr": "bf16", "v_ptr": "bf16", "seq_lens_ptr": "i32", "block_table_ptr": "i32",
             "out_ptr": "bf16", "part_out_ptr": "fp32", "part_lse_ptr": "fp32"},
            {"GROUP": hq // hkv, "BLOCK_G": block_g, "GROUP_TILES": -(-(hq // hkv) // block_g), "HEAD_DIM": d,
             "BLOCK_D": attn.padded_head_dim(d), "BLOCK_N": c.block_n, "PAGE_SIZE": 16,
             "WRITE_PARTIAL": c.num_splits > 1, "FP32_OPERANDS": False},
            c.num_warps, c.num_stages, floats=("scale_log2",), unaligned=("num_q_heads", "num_splits"),
        ))
    return cases + step_cases()


def step_cases() -> list[Case]:
    """The decode step's small fused kernels at Llama-2-7B's sizes."""
    from gpuprof.kernels import activation, norm, rotary

    return [
        Case("add_norm hidden=4096 rmsnorm bf16", norm._add_norm_kernel,
             {"x_ptr": "bf16", "delta_ptr": "bf16", "weight_ptr": "fp32", "bias_ptr": "fp32", "out_ptr": "bf16"},
             {"HAS_DELTA": True, "LAYER_NORM": False, "BLOCK": 4096}, 8, 1, floats=("eps",)),
        Case("rotary_cache_write Hq=32 Hkv=32 D=128 bf16", rotary._rotary_cache_kernel,
             {"qkv_ptr": "bf16", "inv_freq_ptr": "fp32", "positions_ptr": "i64", "pages_ptr": "i32",
              "slots_ptr": "i64", "q_out_ptr": "bf16", "k_cache_ptr": "bf16", "v_cache_ptr": "bf16"},
             {"HEADS": 32, "KV_HEADS": 32, "HEAD_DIM": 128, "ROTARY": True, "HALF_BLOCK": 64, "BLOCK": 128}, 1, 1,
             expects_wide_loads=False),  # 256 bytes per row: two to four bytes per thread
        Case("gated_activation silu inner=11008 bf16", activation._gated_activation_kernel,
             {"gate_up_ptr": "bf16", "out_ptr": "bf16"}, {"ACT": "silu", "BLOCK": 1024}, 4, 1),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run with TRITON_INTERPRET=0: the interpreter does not compile kernels.", file=sys.stderr)
        return 2
    reports = [inspect_case(c) for c in default_cases()]
    if "--json" in argv:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        print(f"{'16-byte loads':>13} {'other':>5} {'LDL/STL':>7} {'regs':>4}  kernel (sm_{ARCH})")
        for r in reports:
            print(f"{r.wide_loads:13d} {r.narrow_loads:5d} {r.local_memory:7d} {r.registers:4d}  "
                  f"{r.name}" + (f"   PROBLEM: {'; '.join(r.problems)}" if r.problems else ""))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
