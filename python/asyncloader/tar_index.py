"""Where the members of an uncompressed tar file lie: ``(path, offset,
size)`` items for :meth:`Worker.load_ranges` and
:class:`asyncloader.torch.RangeDataset`. Built with :mod:`tarfile` (the
headers are read once; no member data is)."""

from __future__ import annotations

import os
import tarfile
from typing import Any, Iterable, List, Optional, Tuple, Union

__all__ = ["tar_members"]


def tar_members(
    path: Union[str, bytes, "os.PathLike"],
    suffixes: Optional[Union[str, Iterable[str]]] = None,
    *,
    names: bool = False,
) -> List[Tuple[Any, ...]]:
    """The regular members of the tar file ``path``, in archive order, as
    ``(path, offset, size)``: ``size`` bytes of ``path`` at byte ``offset``
    (``TarInfo.offset_data``) are the member's contents. ``path`` is the
    argument as given, in every item.

    * ``suffixes``: keep only members whose name ends with one of them
      (``".jpg"`` or ``(".jpg", ".png")``); ``None`` keeps all.
    * ``names``: ``(path, offset, size, name)`` items, with the member's
      name in the archive.

    Directories, links, devices and sparse members (whose data is not one
    contiguous span) are left out. Raises ``tarfile.ReadError`` for a file
    that is not an uncompressed tar (a compressed tar's members are not
    byte ranges of the file)."""
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    elif suffixes is not None:
        suffixes = tuple(suffixes)
    with tarfile.open(os.fsdecode(os.fspath(path)), "r:") as tf:
        out: List[Tuple[Any, ...]] = []
        for m in tf:
            if not m.isreg() or m.issparse():
                continue
            if suffixes is not None and not m.name.endswith(suffixes):
                continue
            out.append((path, m.offset_data, m.size, m.name) if names else (path, m.offset_data, m.size))
        return out
