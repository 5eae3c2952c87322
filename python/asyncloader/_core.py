"""The package's classes under their first module's name.

``Loader``, ``Worker`` and ``Entry`` lived here before the package was
split by concern (``_util``, ``_entry``, ``_worker``, ``_loader``); this
module keeps the old names importable, above all ``_attach_loader`` and
``_attach_worker``, which pickles of ``Loader`` and ``Worker`` made by
earlier versions name.
"""

from ._entry import Entry
from ._loader import (
    DEFAULT,
    Loader,
    _attach_loader,
    _attach_worker,
    default_config,
)
from ._util import MAX_PATH_BYTES, PathLike, _fspath_bytes
from ._worker import Worker

__all__ = [
    "DEFAULT",
    "MAX_PATH_BYTES",
    "Entry",
    "Loader",
    "PathLike",
    "Worker",
    "_attach_loader",
    "_attach_worker",
    "_fspath_bytes",
    "default_config",
]
