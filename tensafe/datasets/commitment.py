"""The content commitment of a dataset version: what "the same data" means.

``commitment = SHA-256("tensafe dataset v1\\0" || for each record in order:
unit(8) || len(8) || canonical_bytes(record) || N(8))`` as hex, where ``unit`` is the
record's privacy-unit index (little-endian; ``2⁶⁴ − 1`` without units), ``len`` the
length of its canonical bytes (:meth:`~tensafe.datasets.records.Record.canonical_bytes`)
and ``N`` the number of records. Two uploads of the same records, in the same order,
grouped into the same units, have the same commitment — whatever the dataset is called
and whatever the unit ids were — so registering them again cannot open a fresh
privacy budget.
"""

from __future__ import annotations

import hashlib
import struct

from tensafe.datasets.records import Record

_DOMAIN = b"tensafe dataset v1\0"
_NO_UNIT = 2**64 - 1


class Commitment:
    """A running commitment over records fed in order.

    Example:
        >>> from tensafe.datasets.records import make_record
        >>> c = Commitment()
        >>> c.add(make_record([1, 2, 3], index=0), unit=None)
        >>> len(c.hexdigest()), c.count
        (64, 1)
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256(_DOMAIN)
        self.count = 0

    def add(self, record: Record, *, unit: int | None) -> None:
        body = record.canonical_bytes()
        self._hash.update(struct.pack("<QQ", _NO_UNIT if unit is None else unit, len(body)))
        self._hash.update(body)
        self.count += 1

    def hexdigest(self) -> str:
        """The commitment of the records added so far (the hash state is kept)."""
        final = self._hash.copy()
        final.update(struct.pack("<Q", self.count))
        return final.hexdigest()


__all__ = ["Commitment"]
