"""Atomic file writes, for every file ort3d produces (engines, caches, manifests, run outputs).

A file is written under a temporary name in its destination folder, flushed to disk, then
renamed over the destination, so a reader (or a crash) never sees a half-written file; on any
exception the temporary file is removed. Permissions follow the umask, as for open().
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path` (same extension, for writers that infer the format
    from it); on success fsync it and rename it onto `path`, on any exception delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    # Reserve the name; mode 0o666 lets the umask decide the final permissions as for open().
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[object], None] | bytes) -> None:
    """Write `write` (bytes, or a callable given the open binary handle) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        if isinstance(write, (bytes, bytearray, memoryview)):
            handle.write(write)
        else:
            write(handle)
