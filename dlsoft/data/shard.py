"""Data sharding for data-parallel training: which batches rank ``r`` of ``N`` reads.

The definition (what makes N ranks at batch B equal to one process at batch N·B):
take the stream of records one process would read, cut it into chunks of B records
(chunk k = records kB .. kB+B-1, with the source's wrap-around and reshuffles), and give
rank r the chunks r, r+N, r+2N, ... So at its i-th forward, rank r reads chunk iN+r, and
the N ranks together read records iNB .. iNB+NB-1: exactly batch i of one process at
batch N·B, split into N consecutive chunks of B in rank order.

A sharded source therefore skips ``r·B`` records before its first batch and ``(N-1)·B``
after each batch. Random transforms draw their numbers for the whole global batch (as
the one process would) and keep the rank's chunk, so crops and mirrors agree too. Every
rank must seed its data layers alike (the distributed trainer broadcasts the seed).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``size`` (``Shard(0, 1)`` reads everything)."""

    rank: int
    size: int

    def __post_init__(self):
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank must be in [0, {self.size}), got {self.rank}")

    def first_skip(self, batch_size: int) -> int:
        """Records to skip before the first batch."""
        return self.rank * batch_size

    def between_skip(self, batch_size: int) -> int:
        """Records to skip after each batch (the other ranks' chunks)."""
        return (self.size - 1) * batch_size

    def chunk(self, batch_size: int) -> slice:
        """This rank's rows in a global batch of ``size·batch_size`` rows."""
        return slice(self.rank * batch_size, (self.rank + 1) * batch_size)


#: The shard of a process that reads everything.
WHOLE = Shard(0, 1)
