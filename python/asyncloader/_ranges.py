"""Tables of ``al_range`` records for ``Worker.request_ranges``: packing
them (``pack_ranges``) and finding a record's address in any buffer
without copying the table."""

from __future__ import annotations

import ctypes
import sys
from array import array
from typing import Any, Iterable, Sequence, Tuple

from ._ffi import AL_NO_DEST
from ._util import _u32, _u64

#: Bytes of one ``al_range`` record.
RANGE_SIZE = 32

_U64 = 1 << 64
# The fourth 64-bit word of a record holds ``mem`` (first) and
# ``reserved`` (0): ``mem`` is its low half on a little-endian machine.
_LITTLE = sys.byteorder == "little"
_NO_DEST_WORD = AL_NO_DEST if _LITTLE else AL_NO_DEST << 32


def _mem_word(mem: int) -> int:
    return mem if _LITTLE else mem << 32


def pack_ranges(items: Iterable[Sequence[int]]) -> bytearray:
    """A table of ``al_range`` records (32 bytes each, the C layout) for
    :meth:`Worker.request_ranges`, one per item, in order. Each item is
    ``(offset, length)`` - into an entry buffer, as
    :meth:`Worker.request_range` - or ``(offset, length, mem, dst_offset)``
    - into destination memory ``mem`` (:data:`asyncloader.ARENA` or an id
    from :meth:`Loader.register`; :data:`asyncloader.NO_DEST` means an
    entry buffer, ``dst_offset`` then ignored) at ``dst_offset``, as
    :meth:`Worker.request_into`.

    Build it once (for a shard's whole index, say) and pass slices of it
    with ``start``/``count``. Raises ``ValueError`` for an item of another
    length or a field outside its unsigned range (64 bits; ``mem`` 32),
    ``TypeError`` for a field that is not an ``int`` (a ``bool`` is not),
    naming the item. What only the library can check (``length`` over
    ``max_file_size``, a destination span outside its memory) is checked
    when the ranges are requested.

    A numpy table works as well: ``np.zeros((n, 4), np.uint64)`` with
    columns offset, length, dst_offset and ``mem`` (``NO_DEST``, ``ARENA``
    or an id; the upper 32 bits of that word, ``reserved``, stay 0 on a
    little-endian machine), or a structured array of the same 32-byte
    layout.
    """
    words = array("Q")
    add = words.extend
    for i, item in enumerate(items):
        k = len(item)
        if k == 2:
            off, length = item
            mem = AL_NO_DEST
            dst = 0
        elif k == 4:
            off, length, mem, dst = item
        else:
            raise ValueError(
                f"pack_ranges: item {i} has {k} fields, not 2 (offset, length) "
                "or 4 (offset, length, mem, dst_offset)"
            )
        if not (
            type(off) is int
            and type(length) is int
            and type(dst) is int
            and type(mem) is int
            and 0 <= off < _U64
            and 0 <= length < _U64
            and 0 <= dst < _U64
            and 0 <= mem <= AL_NO_DEST
        ):
            off = _u64(off, f"pack_ranges: item {i}: offset")
            length = _u64(length, f"pack_ranges: item {i}: length")
            mem = _u32(mem, f"pack_ranges: item {i}: mem")
            dst = _u64(dst, f"pack_ranges: item {i}: dst_offset")
        add((off, length, dst, mem if _LITTLE else mem << 32))
    return bytearray(words)


def _no_dest_table(offs: Sequence[int], lens: Sequence[int]) -> array:
    """Records into entry buffers for checked ``offs``/``lens``, built at
    C speed (three strided copies) for ``Worker.load_ranges``."""
    n = len(offs)
    words = array("Q", bytes(RANGE_SIZE * n))
    words[0::4] = array("Q", offs)
    words[1::4] = array("Q", lens)
    words[3::4] = array("Q", [_NO_DEST_WORD]) * n
    return words


def _table_at(ranges: Any, start: int, count: Any) -> Tuple[int, int, Any]:
    """``(address of record start, records from there, what must stay
    alive during the call)`` of a table of records in any C-contiguous
    buffer. ``count`` (``None``: to the end) is cut to the records left.
    The table is not copied, except a read-only buffer other than
    ``bytes`` (ctypes cannot point into one) or one not 8-byte aligned:
    then the records asked for."""
    try:
        mv = ranges if type(ranges) is memoryview else memoryview(ranges)
    except TypeError:
        raise TypeError(
            f"ranges must be a buffer of al_range records (asyncloader.pack_ranges), "
            f"not {type(ranges).__name__}"
        ) from None
    nbytes = mv.nbytes
    if nbytes % RANGE_SIZE or mv.itemsize not in (1, 2, 4, 8, RANGE_SIZE):
        raise ValueError(
            f"ranges: {nbytes} bytes of items of {mv.itemsize} bytes are not "
            f"{RANGE_SIZE}-byte al_range records (see asyncloader.pack_ranges)"
        )
    if not mv.c_contiguous:
        raise ValueError("ranges must be a C-contiguous buffer")
    total = nbytes // RANGE_SIZE
    if type(start) is not int or not 0 <= start <= total:
        start = _u64(start, "start")
        if start > total:
            raise ValueError(f"start {start} is past the {total} records of ranges")
    left = total - start
    if count is None:
        count = left
    elif type(count) is not int or count < 0:
        count = _u64(count, "count")
    if count > left:
        count = left
    if count == 0:
        return 0, 0, None
    at = start * RANGE_SIZE
    if not mv.readonly:
        keep: Any = ctypes.c_char.from_buffer(mv, at)
        addr = ctypes.addressof(keep)
    elif type(ranges) is bytes:
        keep = ctypes.c_char_p(ranges)  # points at the bytes object's data
        addr = ctypes.cast(keep, ctypes.c_void_p).value + at  # type: ignore[operator]
    else:
        addr = 1  # a copy, below
    if addr % 8:
        # Read-only (ctypes cannot point into it) or not 8-byte aligned
        # (the library reads 64-bit fields): the records asked for, copied.
        keep = (ctypes.c_uint64 * (count * 4)).from_buffer_copy(mv.cast("B")[at : at + count * RANGE_SIZE])
        addr = ctypes.addressof(keep)
    return addr, count, keep
