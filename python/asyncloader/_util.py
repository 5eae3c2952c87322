"""Helpers the modules share: errors, paths, timeouts, the process id
after ``fork``."""

from __future__ import annotations

import math
import numbers
import operator
import os
import sys
import threading
import time
from typing import Any, List, Optional, Tuple, Union

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: Longest path a request may carry, in bytes (the engine's ``PATH_CAP - 1``).
MAX_PATH_BYTES = 4095

#: Blocking waits are cut into slices this long so that Python signal
#: handlers (Ctrl-C) run between them.
WAIT_SLICE_S = 0.1
_WAIT_SLICE_NS = int(WAIT_SLICE_S * 1e9)


def _deadline(timeout: Any) -> Optional[float]:
    """``time.monotonic()`` deadline for a ``timeout`` in seconds, ``None``
    for no limit. ``None``, ``-1`` (C's "wait forever") and ``inf`` wait
    without limit; other negative values and ``nan`` raise ``ValueError``,
    non-numbers (``bool`` included) ``TypeError``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    t = float(timeout)
    if t == -1:
        return None
    if math.isnan(t):
        raise ValueError("timeout must not be nan")
    if t < 0:
        raise ValueError(f"timeout must be >= 0, None or -1 (no limit), not {timeout!r}")
    if math.isinf(t):
        return None
    return time.monotonic() + t


def _slice_ns(deadline: Optional[float]) -> int:
    """The next wait slice: short, so signal handlers (Ctrl-C) run between
    slices, and never past ``deadline`` (``time.monotonic()``; None: none)."""
    if deadline is None:
        return _WAIT_SLICE_NS
    left = deadline - time.monotonic()
    return max(0, min(_WAIT_SLICE_NS, int(left * 1e9)))


_PID = os.getpid()


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _oserror(code: int, what: str = "", filename: Any = None) -> OSError:
    """An ``OSError`` for a positive errno; ``OSError`` picks the subclass
    (``FileNotFoundError``, ``IsADirectoryError``, ``TimeoutError``,
    ``BrokenPipeError`` for ``ESHUTDOWN``, ...)."""
    msg = os.strerror(code)
    if what:
        msg = f"{msg} ({what})"
    if filename is not None:
        return OSError(code, msg, filename)
    return OSError(code, msg)


def _check(rc: int, what: str, filename: Any = None) -> None:
    if rc < 0:
        raise _oserror(-rc, what, filename)


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_tls = threading.local()


def _fspath_bytes(path: PathLike) -> bytes:
    """str / bytes / PathLike -> bytes, the way ``open()`` encodes paths."""
    t = type(path)
    if t is str:
        b = path.encode(_FS_ENCODING, _FS_ERRORS)  # type: ignore[union-attr]
    elif t is bytes:
        b = path  # type: ignore[assignment]
    else:
        b = os.fsencode(path)
    if b"\0" in b:
        raise ValueError("embedded null byte in path")
    return b


def _uint(v: Any, what: str, bits: int) -> int:
    """An unsigned integer argument: ``TypeError`` for anything that is not
    an integer (``8.5``, ``"8"``, and ``True``: a bool is not a count),
    ``ValueError`` outside ``0 .. 2**bits - 1``."""
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(v).__name__}") from None
    if not 0 <= v < 1 << bits:
        raise ValueError(f"{what} out of range: {v}")
    return v


def _u32(v: Any, what: str) -> int:
    return _uint(v, what, 32)


def _u64(v: Any, what: str) -> int:
    return _uint(v, what, 64)


def _pack(paths: Any) -> Tuple[bytes, int, Optional[BaseException]]:
    """Paths packed for ``al_worker_request_packed`` (each ended by a NUL),
    the number packed and, when a path cannot be encoded (a NUL byte
    inside, not a path), the error of that path, where packing stopped.

    A list of ``str`` (or of ``bytes``) is joined and encoded in one go, at
    C speed; anything else goes path by path."""
    first = type(paths[0])
    try:
        if first is str:
            s = "\0".join(paths)
            if s.count("\0") == len(paths) - 1:
                return (s + "\0").encode(_FS_ENCODING, _FS_ERRORS), len(paths), None
        elif first is bytes:
            b = b"\0".join(paths)
            if b.count(b"\0") == len(paths) - 1:
                return b + b"\0", len(paths), None
    except (TypeError, UnicodeError):
        pass  # mixed types, a PathLike, an unencodable str: one by one
    out: List[bytes] = []
    bad: Optional[BaseException] = None
    for p in paths:
        try:
            out.append(_fspath_bytes(p))
        except (TypeError, ValueError) as e:
            bad = e
            break
    return b"".join(x + b"\0" for x in out), len(out), bad
