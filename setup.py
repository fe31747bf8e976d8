from setuptools import setup

# The Triton kernels live in the top-level folder kernels/ but import as gpuprof.kernels: a top-level package
# named `kernels` would clash with an unrelated PyPI package of that name.
setup(
    name="gpuprof",
    version="0.1.0",
    description="Why large-batch LLM decoding stays memory-bound, measured on your GPU, and serving advice from it.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["gpuprof", "gpuprof.cli", "gpuprof.ops", "gpuprof.kernels", "gpuprof.csrc", "gpuprof.cuda"],
    package_dir={"gpuprof": "gpuprof", "gpuprof.kernels": "kernels", "gpuprof.csrc": "csrc"},
    package_data={"gpuprof.csrc": ["*.cu", "*.cuh"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "click>=8.1",
        "numpy",
        "nvidia-ml-py>=12.535",
        "nvtx>=0.2.10",
        "rich>=13",
        "matplotlib>=3.7",
    ],
    extras_require={
        # cupy compiles the CUDA C++ kernels at run time (NVRTC); pick the wheel matching your CUDA major version.
        "cuda": ["cupy-cuda13x>=13"],
        "test": ["pytest>=7", "pandas"],
    },
    entry_points={"console_scripts": ["gpuprof=gpuprof.cli:main"]},
)
