"""Private files and folders: the data folder holds the secret key, the database and call recordings.

Everything we create there is for this process's user only (folders 0700, files 0600), set
explicitly at each place that creates something, so the modes hold whatever umask the process was
started with (``vr3ai serve`` also sets umask 077 for what libraries create on their own). A folder
that already exists is never changed (``VR3AI_DATA_DIR=/srv`` must not turn ``/srv`` private):
:func:`loose_mode` lets the caller warn about it instead.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` as a 0700 folder (missing parents get the usual mode); an existing one stays."""
    p = Path(path)
    if not p.is_dir():
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: theirs
            p.mkdir(mode=PRIVATE_DIR_MODE)
            p.chmod(PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    return p


def loose_mode(path: str | os.PathLike[str]) -> int | None:
    """The group/other permission bits of an existing path, or None when there are none (or no path)."""
    try:
        bits = Path(path).stat().st_mode & 0o077
    except OSError:
        return None
    return bits or None


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` exists as a 0600 file (creating it empty), without touching its content.

    Used before SQLite opens a new database file: SQLite gives its -wal and -shm files the mode of
    the database file, so they follow."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return p  # someone else's file (or a race with another process): never changed
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return p


def open_private(path: str | os.PathLike[str]) -> int:
    """A file descriptor for writing ``path`` from its start, the file being 0600 whoever made it."""
    fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a leftover file keeps its old mode through O_CREAT
    except OSError:
        os.close(fd)
        raise
    return fd
