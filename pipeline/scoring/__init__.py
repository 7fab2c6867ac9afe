"""Batch scoring (``trd score``) and input checking (``trd validate``) for clinic exports.

One code path with training, two engines, one commit policy:

* ``inputs``: the input file's checks and its rows in chunks (CSV or Parquet), bounded memory;
* ``layout``: input layouts (``configs/sources/canonical.yaml`` by default, any tabular source with --format),
  checked against the contract;
* ``context``: the model (hash-checked, pickle-free), layout and rules, loaded once per run;
* ``chunks``: scoring one chunk, the code both engines run (harmonisation, scoring rule, duplicates, features,
  model, explanations; ``rows in == scored + rejected`` per chunk);
* ``dedupe``: duplicated patient ids, within a file and across a Dask job's partitions;
* ``sinks``: output writers and the commit policy (staged beside, locked, all renamed into place or none);
* ``local``: the local engine (one file, this process); ``validate``: the checks without predicting;
* ``partitions``, ``plugin``, ``dask_tasks``, ``dask_engine``: the Dask engine (one task per partition, the model
  loaded once per worker, a second pass for duplicates across partitions, one output folder);
* ``progress``: the progress bar with the time remaining.

Nothing is lost: every input row is scored or written to the rejects with its row number, patient id, reason
code and message. Nothing partial is ever left in place of an output. Input errors name the row and column,
never the row's content.
"""

from pipeline.scoring.context import ScoringContext, build_context
from pipeline.scoring.local import ScoreSummary, score_file
from pipeline.scoring.progress import progress_wanted
from pipeline.scoring.validate import ValidationReport, validate_file

# the Dask engine (pipeline.scoring.dask_engine.score_dataset) is imported where it is used: it loads distributed
__all__ = [
    "ScoreSummary",
    "ScoringContext",
    "ValidationReport",
    "build_context",
    "progress_wanted",
    "score_file",
    "validate_file",
]
