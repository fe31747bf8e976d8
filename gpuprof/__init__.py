"""gpuprof: why large-batch LLM decoding stays memory-bound, measured on your GPU, turned into serving advice."""

__version__ = "0.1.0"
