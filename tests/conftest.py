"""Test setup: GPU tests carry the `gpu` marker and skip, with their reason, where no CUDA GPU is visible."""

from __future__ import annotations

import os

import pytest

# Triton kernels run on the CPU through Triton's interpreter where no GPU is present. This must be set before
# triton is first imported.
try:
    import torch

    _HAS_GPU = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_GPU = False
if not _HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if _HAS_GPU else "cpu"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped with its reason where none is visible")
    config.addinivalue_line(
        "markers", "interpreter: runs our Triton kernels on the CPU, which needs Triton in interpreter mode"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _HAS_GPU:
        # With a GPU, Triton compiles kernels for it and cannot also interpret them in this process; the gpu tests
        # run the same kernels for real.
        skip = pytest.mark.skip(reason="Triton compiles for the GPU here, so it cannot run kernels on the CPU; "
                                       "the gpu-marked tests cover these kernels")
        marker = "interpreter"
    else:
        skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
        marker = "gpu"
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU through Triton's interpreter."""
    return DEVICE
