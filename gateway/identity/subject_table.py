"""A set of subject ids held without a Python object per subject (issue 22).

The day's per-subject state (the visit history that qualifies a visitor's later visits, the content
rules' visit counts) grows through the opening hours to ~26k pseudonymous subjects at 500 devices
and is dropped at the pseudonym rotation. As dict keys, those ids are one small ``str`` each,
scattered through Python's 1 MiB allocator arenas among the day's other objects: dropping them at
the rotation frees the strings but not the arenas, so the process's memory stayed at its day's
high. Here a subject that is a pseudonym (lowercase hex of 1..32 bytes, as
``gateway.identity.pseudonyms`` makes them) is held as its bytes in one ``bytearray`` and found
through an open-addressing index in one ``array``; a few large buffers that go back to the
system whole when the table is dropped or rebuilt. Any other id (a customer reference, a test's
name) goes to a plain dict: there are few.

Each subject gets a **row** (0, 1, 2 ... in insertion order), for the owner's per-row arrays. A
removed subject leaves a dead row until ``compacted`` renumbers the live ones (the owner gathers its
arrays by the old rows it returns). Iteration (``rows``) is in insertion order, as a dict's is.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

KEY_BYTES = 32  # the longest pseudonym (``privacy.pseudonym_bytes`` <= 32)
_SLOT = KEY_BYTES + 1  # length byte + the key's bytes, zero-padded
_EMPTY, _GONE = -1, -2  # index slots: never used / a removed key (probing continues past it)
_HEX = frozenset("0123456789abcdef")


def _packed(key: str) -> bytes | None:
    """The key's slot bytes when it is lowercase hex of 1..KEY_BYTES bytes, else None."""
    n = len(key)
    if n == 0 or n > 2 * KEY_BYTES or n % 2 or not _HEX.issuperset(key):
        return None
    raw = bytes.fromhex(key)
    return bytes((len(raw),)) + raw + bytes(KEY_BYTES - len(raw))


class SubjectTable:
    """Subject id -> row, in a few flat buffers (see the module's docstring)."""

    __slots__ = ("_index", "_keys", "_live", "_n_live", "_other", "_used")

    def __init__(self) -> None:
        self._keys = bytearray()  # row -> slot bytes (rows of "other" keys: unused zeros)
        self._live = bytearray()  # row -> 1 while the subject is held
        self._index: array[int] = array("i", [_EMPTY]) * 8  # open addressing over packed keys -> row
        self._used = 0  # index slots not _EMPTY (live + _GONE)
        self._other: dict[str, int] = {}  # ids that are not pseudonyms -> row
        self._n_live = 0

    def __len__(self) -> int:
        return self._n_live

    @property
    def n_rows(self) -> int:
        """Rows handed out so far (live and dead): the length of the owner's per-row arrays."""
        return len(self._live)

    def _find(self, packed: bytes) -> tuple[int, int]:
        """(index slot holding ``packed``, or the slot to insert it at; its row or -1)."""
        index, keys = self._index, self._keys
        mask = len(index) - 1
        i = hash(packed) & mask
        first_gone = -1
        while True:
            r = index[i]
            if r == _EMPTY:
                return (first_gone if first_gone >= 0 else i), -1
            if r == _GONE:
                if first_gone < 0:
                    first_gone = i
            elif keys[r * _SLOT : (r + 1) * _SLOT] == packed:
                return i, r
            i = (i + 1) & mask

    def get(self, key: str) -> int:
        """The subject's row, -1 when not held."""
        packed = _packed(key)
        if packed is None:
            return self._other.get(key, -1)
        return self._find(packed)[1]

    def __contains__(self, key: str) -> bool:
        return self.get(key) >= 0

    def add(self, key: str) -> int:
        """The subject's row, a new one (at the end) when it was not held."""
        packed = _packed(key)
        if packed is None:
            row = self._other.get(key, -1)
            if row < 0:
                row = self._other[key] = self._new_row(bytes(_SLOT))
            return row
        slot, row = self._find(packed)
        if row >= 0:
            return row
        row = self._new_row(packed)
        if self._index[slot] == _EMPTY:
            self._used += 1
        self._index[slot] = row
        if 2 * self._used > len(self._index):
            self._reindex()
        return row

    def _new_row(self, packed: bytes) -> int:
        self._keys += packed
        self._live.append(1)
        self._n_live += 1
        return len(self._live) - 1

    def remove(self, key: str) -> int:
        """Drop the subject; its (now dead) row, or -1 when it was not held."""
        packed = _packed(key)
        if packed is None:
            row = self._other.pop(key, -1)
        else:
            slot, row = self._find(packed)
            if row >= 0:
                self._index[slot] = _GONE
        if row >= 0:
            self._live[row] = 0
            self._n_live -= 1
        return row

    def key(self, row: int) -> str:
        """The subject id of a live row."""
        b = self._keys[row * _SLOT : (row + 1) * _SLOT]
        if b[0] == 0:  # not a pseudonym: the dict knows (few)
            for k, r in self._other.items():
                if r == row:
                    return k
            raise KeyError(row)
        return b[1 : 1 + b[0]].hex()

    def is_live(self, row: int) -> bool:
        return bool(self._live[row])

    def rows(self) -> Iterator[int]:
        """Live rows in insertion order."""
        live = self._live
        return (r for r in range(len(live)) if live[r])

    def keyed_rows(self) -> Iterator[tuple[int, str]]:
        """(row, subject id) of the live rows in insertion order (``key`` of every row without a
        search of the non-pseudonym ids for each)."""
        other_of = {r: k for k, r in self._other.items()}
        keys, live = self._keys, self._live
        for r in range(len(live)):
            if live[r]:
                n = keys[r * _SLOT]
                yield r, (keys[r * _SLOT + 1 : r * _SLOT + 1 + n].hex() if n else other_of[r])

    def first(self) -> int:
        """The oldest live row, -1 when empty."""
        i = self._live.find(1)
        return i

    def _reindex(self) -> None:
        size = 8
        while size < 4 * max(1, self._n_live):
            size *= 2
        index: array[int] = array("i", [_EMPTY]) * size
        mask = size - 1
        keys, live = self._keys, self._live
        used = 0
        for r in range(len(live)):
            if live[r] and keys[r * _SLOT]:
                i = hash(bytes(keys[r * _SLOT : (r + 1) * _SLOT])) & mask
                while index[i] != _EMPTY:
                    i = (i + 1) & mask
                index[i] = r
                used += 1
        self._index, self._used = index, used

    def compacted(self) -> tuple[SubjectTable, list[int]]:
        """A new table holding the live subjects in the same order, and the old row of each new
        row (the owner gathers its per-row arrays with it). The old buffers are freed with ``self``."""
        new = SubjectTable()
        old_rows = list(self.rows())
        other_of = {r: k for k, r in self._other.items()}
        keys = self._keys
        for r in old_rows:
            packed = bytes(keys[r * _SLOT : (r + 1) * _SLOT])
            if packed[0] == 0:
                new._other[other_of[r]] = new._new_row(packed)
            else:
                new._new_row(packed)
        new._reindex()
        return new, old_rows


class SubjectCounts:
    """Subject id -> a count, as a dict of them would hold it (insertion order, ``pop_oldest``),
    in a ``SubjectTable`` and one ``array``: no Python object per subject (the content rules' visit
    counts of a pseudonym rotation period, dropped whole at the next one)."""

    __slots__ = ("_counts", "_table")

    def __init__(self) -> None:
        self._table = SubjectTable()
        self._counts: array[int] = array("q")

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: str) -> bool:
        return self._table.get(key) >= 0

    def get(self, key: str) -> int | None:
        row = self._table.get(key)
        return self._counts[row] if row >= 0 else None

    def __setitem__(self, key: str, n: int) -> None:
        row = self._table.add(key)
        if row == len(self._counts):
            self._counts.append(n)
        else:
            self._counts[row] = n

    def pop_oldest(self) -> str:
        """Drop the subject held longest (a dict's ``pop(next(iter(d)))``); its id."""
        row = self._table.first()
        if row < 0:
            raise KeyError("pop_oldest from an empty SubjectCounts")
        key = self._table.key(row)
        self._table.remove(key)
        if self._table.n_rows > 4096 and 2 * len(self._table) < self._table.n_rows:
            self._table, rows = self._table.compacted()
            old = self._counts
            self._counts = array("q", (old[r] for r in rows))
        return key

    def items(self) -> Iterator[tuple[str, int]]:
        c = self._counts
        return ((k, c[r]) for r, k in self._table.keyed_rows())
