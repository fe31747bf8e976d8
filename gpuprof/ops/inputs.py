"""Random benchmark inputs drawn on the device itself, reproducibly from the harness's CPU generator.

Decode caches reach gigabytes; drawing them on the CPU and copying would take longer than the benchmark. The
CPU generator the harness passes in gives one seed for a generator on the device, so a point stays reproducible.
"""

from __future__ import annotations

import torch


def device_generator(device: torch.device | str, generator: torch.Generator) -> torch.Generator:
    """A generator on `device`, seeded from the next draw of `generator` (the CPU one itself on the CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)

