"""gpuprof: why large-batch LLM decoding stays memory-bound, measured on your GPU, turned into serving advice."""

import os as _os

__version__ = "0.1.0"


def _choose_triton_mode() -> None:
    # Without a CUDA GPU, Triton can run kernels only through its CPU interpreter, and Triton fixes that choice
    # when it is first imported: so it is made here, before any part of gpuprof (or torch) imports triton.
    if "TRITON_INTERPRET" in _os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        _os.environ["TRITON_INTERPRET"] = "1"


_choose_triton_mode()
