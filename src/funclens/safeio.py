"""Reading a file whose size and kind are not trusted: only a regular file, never more than a stated bound.

A leaf module (it imports only the error classes), so that config and data readers share it.

Example:
    >>> read_regular(Path("/dev/zero"), 1024, FunclensError, "data file")
    Traceback (most recent call last):
    funclens.errors.FunclensError: /dev/zero: a data file must be a regular file
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from funclens.errors import FunclensError


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from the open file ``fd``, read in chunks of at most 1 MiB: a bound on
    what a file that grows while it is read, or a device, can make funclens hold.

    Args:
        fd: an open file descriptor.
        limit: the most bytes returned.

    Example:
        >>> fd = os.open("/dev/zero", os.O_RDONLY)
        >>> len(read_at_most(fd, 5)); os.close(fd)
        5
    """
    chunks, got = [], 0
    while got < limit:
        chunk = os.read(fd, min(limit - got, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_regular(path: Path, limit: int, error: type[FunclensError], what: str) -> bytes:
    """The bytes of the regular file ``path``, refused with one ``error`` line when it is missing, not a regular
    file, or over ``limit`` bytes.

    Opened without blocking and checked with fstat before any read, so a FIFO, a device such as /dev/zero or a
    folder is refused at once instead of hanging or filling the memory; the read itself stops past ``limit``,
    in case the file grows meanwhile.

    Args:
        path: the file.
        limit: the most bytes accepted.
        error: the exception class raised (a :class:`FunclensError`: the user's input).
        what: what the file is, for the message: ``"study file"``, ``"data file"``.

    Example:
        >>> read_regular(Path("/nonexistent.toml"), 10, FunclensError, "study file")
        Traceback (most recent call last):
        funclens.errors.FunclensError: study file not found: /nonexistent.toml
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: a {what} must be a regular file")
        raw = b"" if st.st_size > limit else read_at_most(fd, limit + 1)
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    finally:
        os.close(fd)
    if st.st_size > limit or len(raw) > limit:
        raise error(f"{path}: over the {limit}-byte limit of a {what}")
    return raw
