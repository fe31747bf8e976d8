"""CUDA C++ decode kernels (csrc/), compiled at run time and launched on torch tensors."""
