"""Files: reading only regular files with a size cap, and writing so that a reader never sees half of one."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

TEMP_PREFIX = ".tmp-"


class FileTooLargeError(OSError):
    """A file is larger than the cap its reader allows."""


def read_regular_file(path: Union[str, Path], max_bytes: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes``.

    A FIFO would block forever and ``/dev/zero`` never ends, so anything but a regular file is refused
    (OSError with errno EINVAL) before a byte is read; O_NONBLOCK keeps the open itself from waiting on a
    FIFO with no writer. The size is checked on the open descriptor (no race with a swapped path) and
    reading stops at the cap even when the file grows meanwhile. Raises OSError (FileTooLargeError
    above the cap).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket is never read)")
        if info.st_size > max_bytes:
            raise FileTooLargeError(errno.EFBIG, f"file is {info.st_size:,} bytes; the limit is {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            # read what fstat announced (+1 to see growth) rather than max_bytes: read(n) allocates n bytes
            data = handle.read(info.st_size + 1)
            while len(data) > info.st_size and len(data) <= max_bytes:  # still being written: read on, capped
                more = handle.read(min(1 << 20, max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLargeError(errno.EFBIG, f"file grew past the limit of {max_bytes:,} bytes while read")
    return data


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None],
                 temp_dir: Union[str, Path, None] = None) -> Path:
    """Create ``path`` (and its folder) with ``write(handle)``; on any failure nothing is left behind.

    The temporary file is written beside ``path``, or in ``temp_dir`` (same file system) so that files
    left by a killed writer can be found in one place (see ``remove_stale_temp_files``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    if temp_dir is not None:
        folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def remove_stale_temp_files(folder: Union[str, Path], older_than: float) -> int:
    """Delete ``atomic_write`` temporary files in ``folder`` not modified for ``older_than`` seconds.

    Only a writer killed mid-save (SIGKILL, power loss) leaves one; a live writer finishes in far less
    time, so an old one is garbage. Returns how many were removed; errors are ignored (best effort).
    """
    now, removed = time.time(), 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False) \
                    and now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def check_writable_dir(folder: Union[str, Path]) -> Optional[str]:
    """None when files can be created in ``folder`` (created if needed), else the reason they cannot.

    Tries for real (creates and removes a temporary file): permission bits say nothing about a
    read-only mount, and root passes every permission check.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
