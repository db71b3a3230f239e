"""Whole-sequence execution: the reference loop, fused kernels, and the dispatcher."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def _drop_stale_kernel_caches(package: Path = _PACKAGE) -> int:
    """Delete Numba cache files of this package older than the newest engine source. Numba keys a
    cached kernel on its own file's timestamp only, while the kernels of ``cpu.py``, ``stream.py``,
    the variants and the bench compile in code from ``_jitmath.py``: after an edit there (an
    editable install) they would keep running the old machine code. Installed releases replace
    every file, so this finds nothing there. Returns the number of files removed."""
    try:
        newest = max(p.stat().st_mtime for p in (package / "engine").glob("*.py"))
        removed = 0
        for cache in package.rglob("__pycache__"):
            for entry in os.scandir(cache):
                if entry.name.endswith((".nbi", ".nbc")) and entry.stat().st_mtime < newest:
                    os.unlink(entry.path)
                    removed += 1
        return removed
    except OSError:  # a read-only install, or another process removed the file first: nothing to do
        return 0


_drop_stale_kernel_caches()

from grulab.engine._scratch import release_scratch  # noqa: E402  (after the cache check: it imports torch)

__all__ = ["release_scratch"]
