"""Duplicated patient ids: the hashed set of ids seen, first occurrences within a chunk, and across partitions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.scoring.dedupe import SeenIds, duplicates_across_partitions, id_hashes
from pipeline.scoring.partitions import PartitionResult


def test_seen_ids_find_every_earlier_id() -> None:
    seen = SeenIds()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 2**63, 1000, dtype=np.uint64) for _ in range(20)]
    for batch in batches:
        seen.add(batch)
    assert seen.contains(np.concatenate(batches)).all()
    assert not seen.contains(rng.integers(0, 2**63, 1000, dtype=np.uint64)).any()
    assert len(seen.levels) <= 6


def test_repeats_flags_ids_seen_before_and_repeated_within_the_chunk() -> None:
    seen = SeenIds()
    first = seen.repeats(pd.Series(["A", "B", "A"], dtype="string"))
    second = seen.repeats(pd.Series(["C", "B", "C", "D"], dtype="string"))
    assert first.tolist() == [False, False, True]
    assert second.tolist() == [False, True, True, False]


def test_id_hashes_do_not_depend_on_the_column_dtype() -> None:
    ids = ["P1", "P2", "é"]
    assert (id_hashes(pd.Series(ids, dtype=object)) == id_hashes(pd.Series(ids, dtype="string"))).all()


def test_duplicates_across_partitions_name_the_partition_that_scored_first() -> None:
    def result(index: int, ids: list[str]) -> PartitionResult:
        return PartitionResult(index, scored=len(ids), hashes=id_hashes(pd.Series(ids, dtype="string")))

    names = {0: "a.csv", 1: "b.csv", 2: "c.csv"}
    found = duplicates_across_partitions([result(0, ["A", "B"]), result(1, ["C"]), result(2, ["C", "X", "A"])], names)
    assert list(found) == [2]
    positions, earlier = found[2]
    assert positions.tolist() == [0, 2]
    assert earlier == ("b.csv", "a.csv")
    assert duplicates_across_partitions([result(0, ["A"]), result(1, ["B"])], names) == {}
