"""CUDA C++ decode kernels (csrc/), compiled at run time and launched on torch tensors.

- `gpuprof.cuda.attention.decode_attention` and `gpuprof.cuda.gemv.gemv`: the launchers (`impl="cuda"`).
- `gpuprof.cuda.runtime`: NVRTC build through cupy at first use, cupy's on-disk cache, launch on torch's stream.
- `gpuprof.cuda.emulator`: the same kernels on the CPU (g++), for tests without a GPU.
- `gpuprof.cuda.instances`: every template instantiation, the one list NVRTC, nvcc and the emulator compile.
- `gpuprof.cuda.compile_check`: nvcc / NVRTC builds with the ptxas report, failing on spills (CI).

Nothing here is compiled at `pip install`; importing this package needs neither a GPU nor cupy.
"""

from gpuprof.cuda.runtime import cache_dir, unavailable_reason

__all__ = ["cache_dir", "unavailable_reason"]
