"""Files: reading only regular files with a size cap, and writing so that a reader never sees half of one."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 600  # an atomic_write temporary file this old was left by a killed writer
_UMASK_LOCK = threading.Lock()


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
        # mkstemp creates the file 0600; the finished file gets what open() would give it (0666 less umask)
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """``atomic_write`` of UTF-8 text; a lone surrogate (a non-UTF-8 file name read by Python) is written
    escaped (``\\udcff``) rather than failing the whole file."""
    return atomic_write(path, lambda out: out.write(text.encode("utf-8", "backslashreplace")))


def current_umask() -> int:
    """The process's umask (Linux: read from /proc, elsewhere set and restored under a lock)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def printable(text: str) -> str:
    """``text`` safe to show: control and other unprintable characters escaped (``\\x1b``, ``\\u200b``), and
    the bytes of a file name that is not UTF-8 (surrogate escapes, ``os.fsdecode``) shown as ``\\xff``.

    Markup is left alone (HTML-escape after this); printable text, spaces and non-ASCII letters pass unchanged.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode / surrogateescape keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


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
    read-only mount, and root passes every permission check. Folders it had to create are removed again,
    so a run that fails before writing its outputs leaves no new empty folder (writers create their own).
    """
    folder = Path(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        for made in created:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break
    return None
