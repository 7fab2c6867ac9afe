"""Duplicated patient ids: the first row of a patient is scored, later rows are rejected (``duplicate_record``).

A streaming scorer cannot look ahead to pick the most complete record, which the clean stage does for training
data. Ids are kept as 64-bit hashes (8 bytes per scored patient), within a file by :class:`SeenIds` and across
the partitions of a Dask job by :func:`duplicates_across_partitions`, in (partition, row) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.scoring.partitions import PartitionResult


def id_hashes(patient_ids: pd.Series) -> np.ndarray:
    """64-bit hashes of patient ids: the one hash every duplicate check compares."""
    return pd.util.hash_pandas_object(patient_ids.astype("string"), index=False).to_numpy(dtype=np.uint64)


class SeenIds:
    """Patient ids already scored, as sorted 64-bit hashes in a few levels (amortised O(n log n), 8 B/id)."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if not self.levels:
            return found
        # in sorted order the binary searches move forward through each level: ~3x faster on millions of ids
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        hit = np.zeros(len(hashes), dtype=bool)
        for level in self.levels:
            pos = np.searchsorted(level, ordered)
            pos = np.minimum(pos, len(level) - 1)
            hit |= level[pos] == ordered
        found[order] = hit
        return found

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):  # a chunk whose rows were all rejected: an empty level would break contains()
            return
        self.levels.append(np.sort(hashes))
        while len(self.levels) > 1 and len(self.levels[-1]) >= len(self.levels[-2]) // 2:
            merged = np.concatenate([self.levels.pop(), self.levels.pop()])
            merged.sort(kind="stable")  # in place (radix sort for integers): no second copy at the peak
            self.levels.append(merged)

    def repeats(self, patient_ids: pd.Series) -> np.ndarray:
        """Mask of the ids seen before or earlier in ``patient_ids``; the others are remembered from now on."""
        hashes = id_hashes(patient_ids)
        repeated = self.contains(hashes) | pd.Series(hashes).duplicated().to_numpy()
        self.add(hashes[~repeated])  # unique: repeats within the chunk are in `repeated`
        return repeated


def duplicates_across_partitions(
    results: Sequence[PartitionResult], names: dict[int, str]
) -> dict[int, tuple[np.ndarray, tuple[str, ...]]]:
    """Scored rows whose id was scored in an earlier partition (client side, ``results`` in partition order).

    Returns, for each partition that has any, their positions in its scored file and, for each, the name of the
    partition where the id was scored first.
    """
    seen = SeenIds()
    found: dict[int, tuple[np.ndarray, tuple[str, ...]]] = {}
    for k, result in enumerate(results):
        if not len(result.hashes):
            continue
        repeated = seen.contains(result.hashes)
        if repeated.any():
            positions = np.flatnonzero(repeated)
            pending = result.hashes[positions]
            first = np.full(len(pending), "", dtype=object)
            for earlier in results[:k]:  # rare path: name the partition where each id was scored
                hit = (first == "") & np.isin(pending, earlier.hashes)
                first[hit] = names[earlier.index]
            found[result.index] = (positions, tuple(first))
        seen.add(np.unique(result.hashes[~repeated]))
    return found
