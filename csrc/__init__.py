"""CUDA C++ sources, shipped as package data and compiled at first use through NVRTC (see gpuprof/cuda/)."""
