"""Triton decode kernels, imported as `gpuprof.kernels` (setup.py maps this folder there).

One file per operation: the `@triton.jit` kernel and a thin launcher that takes torch tensors. Validation,
dispatch between implementations and the references live in `gpuprof.ops`.
"""
