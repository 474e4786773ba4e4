"""Crash-safe file replacement: a file on disk (checkpoint, dataset shard, episode metadata) is either the old
complete file or the new complete file. No torch here: the dataset writer of `worldsim play --record` uses it too.

The data goes to a temporary file in the target's own directory (so the final rename never crosses a file
system), is fsynced, and then ``os.replace`` swaps it in; the directory is fsynced so the rename itself survives
a power loss. A failure part-way leaves the previous file untouched and removes the temporary one. The new file
gets the mode of the file it replaces, or for a new one what ``open`` would give (0o666 less the umask; a
temporary file is created 0o600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import, not while threads write
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path`` atomically. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else NEW_FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; directories cannot be opened for fsync on Windows, where this is a no-op."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
