"""Atomic file writes shared by every module that writes a file.

A file fastprune writes is either the complete new file or the previous one (or absent), never a
half-written mix: the content goes to a temporary file in the target's directory, is flushed to
disk, and is renamed over the target (``os.replace``, atomic on POSIX and Windows). The new file
takes the permissions of the file it replaces, or those the umask gives a new file (the
temporary file's own 0600 never shows). A target that is a symbolic link is written through: the
file the link points to is replaced and the link stays.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file, then move it onto `path` atomically.

    Returns the path actually replaced (the symlink's target when `path` is a link). Raises
    IsADirectoryError when `path` is a directory and FileNotFoundError when its directory does
    not exist; on any failure, the interrupt included, `path` is left as it was.
    """
    with atomic_path(path) as temporary, temporary.open("wb") as f:
        write(f)
    return resolve_target(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (a library's
    ``save_file``): when the body finishes, the file there is synced, given the permissions
    `path` has (or the umask's for a new file) and moved onto `path` atomically; when it
    fails, it is removed and `path` is left as it was."""
    target = _writable_target(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temporary, _mode_for(target))
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    return atomic_write(path, write)


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to `path` replaces: `path`, or what it links to (followed to the end)."""
    p = Path(path)
    if p.is_symlink():
        return p.resolve()
    return p if str(p.parent) else Path(".") / p


#: The marker that a directory being written is not complete yet (see :func:`incomplete_marker`).
INCOMPLETE = ".fastprune-incomplete"


@contextlib.contextmanager
def incomplete_marker(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Mark `directory` incomplete while the body writes into it.

    The marker file ``.fastprune-incomplete`` is created first and removed only when the body
    finishes without an exception, so a directory that still holds it after a crash or an
    interrupt is known to be partial. The directory is created if needed.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    marker = d / INCOMPLETE
    atomic_write_text(marker, "this directory is being written, or its writing failed\n")
    yield d
    marker.unlink()
    _sync_directory(d)


def _writable_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to `path` replaces, after checking that it can be a file."""
    target = resolve_target(path)
    if target.is_dir():
        msg = f"path: {str(path)!r} is a directory, expected a file name"
        raise IsADirectoryError(msg)
    if not target.parent.is_dir():
        msg = f"path: the directory of {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    return target


def _mode_for(target: Path) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask; read from /proc where it can be, since setting it to read it back
    briefly changes it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _sync_directory(directory: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
