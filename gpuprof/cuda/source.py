"""The CUDA C++ sources shipped in `gpuprof.csrc`, as files and as single self-contained texts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import gpuprof.csrc

CSRC_DIR = Path(gpuprof.csrc.__file__).resolve().parent

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def path(name: str) -> Path:
    return CSRC_DIR / name


def expanded(name: str, defines: tuple[str, ...] = ()) -> str:
    """The source with our own `#include "..."` files pasted in (each once), `#line` markers keeping file names.

    NVRTC and cupy's cache then see one text: an edited header changes the cache key, and Nsight Compute still
    maps SASS back to the right file and line (`-lineinfo`).
    """
    seen: set[str] = set()
    head = "".join(f"#define {d}\n" for d in defines)
    return head + _expand(name, seen)


def _expand(name: str, seen: set[str]) -> str:
    if name in seen:
        return ""
    seen.add(name)
    file = path(name)
    out = [f'#line 1 "{file}"\n']
    for number, line in enumerate(file.read_text().splitlines(keepends=True), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match and path(match.group(1)).exists() and not match.group(1).startswith("cpu_emulator"):
            out.append(_expand(match.group(1), seen))
            out.append(f'#line {number + 1} "{file}"\n')
        else:
            out.append(line)
    return "".join(out)


def digest(*texts: str) -> str:
    """A short content hash, used to key on-disk build caches."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def all_files_digest() -> str:
    """Hash of every .cu and .cuh file in csrc/."""
    files = sorted(CSRC_DIR.glob("*.cu*"))
    return digest(*(f.name + f.read_text() for f in files))
