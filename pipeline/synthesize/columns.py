"""The synthetic export's columns while the generator works on them: numbers as float64 arrays, text as integer
codes into a vocabulary (:class:`TextColumn`).

Apart from rendering (pipeline/synthesize/export.py) and the defects (pipeline/synthesize/defects.py) because
both write into these columns: copying, blanking, duplicating and shuffling millions of cells stay cheap, and a
pandas frame is built once, at the end (:func:`to_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass
class TextColumn:
    """A text column as integer codes into a vocabulary (-1 = missing).

    Copying, blanking, duplicating and shuffling move 4-byte integers instead of Python strings; Arrow strings
    are built once, when the frame is made.
    """

    codes: np.ndarray  # int32
    vocab: pa.StringArray

    @classmethod
    def from_strings(cls, values: Any) -> TextColumn:
        codes, uniques = pd.factorize(pd.Series(values, dtype="str"), use_na_sentinel=True)
        return cls(codes.astype(np.int32), pa.array(uniques.to_numpy(dtype=object), type=pa.string()))

    @classmethod
    def from_choices(cls, index: np.ndarray, choices: Any) -> TextColumn:
        return cls(np.array(index, dtype=np.int32), pa.array(list(choices), type=pa.string()))  # own copy

    def arrow(self, rows: np.ndarray | None = None) -> pa.Array:
        index = self.codes if rows is None else self.codes[rows]
        indices = pa.array(np.maximum(index, 0), mask=index < 0)
        return pa.DictionaryArray.from_arrays(indices, self.vocab).dictionary_decode()

    def assign(self, rows: np.ndarray, strings: np.ndarray) -> None:
        """Write new strings (e.g. typos) into ``rows``, extending the vocabulary."""
        uniques, inverse = np.unique(strings.astype(str), return_inverse=True)
        self.codes[rows] = len(self.vocab) + inverse
        self.vocab = pa.concat_arrays([self.vocab, pa.array(uniques.tolist(), type=pa.string())])


Column = np.ndarray | TextColumn


def missing(column: Column) -> np.ndarray:
    return column.codes < 0 if isinstance(column, TextColumn) else np.isnan(column)


def blank(column: Column, rows: np.ndarray) -> None:
    if isinstance(column, TextColumn):
        column.codes[rows] = -1
    else:
        column[rows] = np.nan


def take(column: Column, index: np.ndarray) -> Column:
    return TextColumn(column.codes[index], column.vocab) if isinstance(column, TextColumn) else column[index]


def concat(first: Column, second: Column) -> Column:
    if isinstance(first, TextColumn) and isinstance(second, TextColumn):
        if second.vocab is not first.vocab:
            raise ValueError("only a copy of a text column (sharing its vocabulary) can be appended to it")
        return TextColumn(np.concatenate([first.codes, second.codes]), first.vocab)
    return np.concatenate([first, second])


def as_text(column: Column, rows: np.ndarray) -> pa.Array:
    """Cell values as text for the log (numbers without a trailing '.0'; missing stays missing)."""
    if isinstance(column, TextColumn):
        return column.arrow(rows)
    return pa.array(column[rows], from_pandas=True).cast(pa.string())


def level_index(values: pd.Series, levels: list[str]) -> np.ndarray:
    index = pd.Categorical(values, categories=levels).codes
    if (index < 0).any():
        raise ValueError(f"values outside {levels} in column {values.name}")
    return index


def to_frame(columns: Mapping[str, Column]) -> pd.DataFrame:
    """Text columns as pandas strings (missing = NaN), numbers as float64, in export order."""
    return pd.DataFrame(
        {
            name: pd.array(values.arrow(), dtype="str") if isinstance(values, TextColumn) else values
            for name, values in columns.items()
        }
    )


def from_frame(frame: pd.DataFrame) -> dict[str, Column]:
    return {
        name: frame[name].to_numpy(dtype="float64", copy=True)
        if pd.api.types.is_float_dtype(frame[name])
        else TextColumn.from_strings(frame[name])
        for name in frame.columns
    }
