"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed,
so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


class WriteError(OSError):
    """A file could not be written (full disk, no permission); the old file, if any, is intact."""


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls ``write(f)`` on a temporary binary file, then renames it to ``path``.

    Raises:
        WriteError: naming ``path`` and the cause; ``path`` is unchanged.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(f"could not write {path} ({error.strerror or error})") from error
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_temporaries(folder: Path) -> list[Path]:
    """Deletes the temporary files that :func:`atomic_write` left in ``folder`` when its
    process was killed mid-write; returns them. Call it only while owning ``folder``."""
    stale = [path for path in folder.glob(".*.tmp") if path.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
