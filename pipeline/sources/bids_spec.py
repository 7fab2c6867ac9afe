"""The model of a ``kind: bids_phenotype`` source file (configs/sources/ds005917.yaml): :class:`BidsSourceSpec`,
loaded and checked by :func:`load_bids_spec`.

It describes a pinned public release (its files, checksums and urls, used by ``trd fetch``) and an ``adapter:``
section (:class:`BidsAdapter`) that says how the release's tables map onto canonical columns. Apart from the
adapter (pipeline/sources/bids.py) because ``trd fetch`` needs only this model, not the staging or harmonisation.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    PositiveInt,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.params import Frozen, format_errors
from pipeline.sources import BOOKKEEPING_COLUMNS
from pipeline.sources.spec import CategoricalMap, load_yaml_spec

ID_COLUMN = "patient_id"
RESERVED_COLUMNS: frozenset[str] = frozenset({ID_COLUMN, *BOOKKEEPING_COLUMNS})


def _relative_posix(value: str) -> str:
    """A path inside the dataset folder: relative, '/'-separated, no '..' (it is joined onto a local folder)."""
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"'{value}' must be a relative path inside the dataset, with '/' and without '..'")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_posix)]
CanonicalName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
RawName = Annotated[str, Field(min_length=1)]


class ParticipantsTable(Frozen):
    """The primary table: one row per participant."""

    path: RelativePath = "participants.tsv"
    id_column: RawName = "participant_id"
    numeric: dict[RawName, CanonicalName] = Field(default_factory=dict)  # parsed as numbers
    text: dict[RawName, CanonicalName] = Field(default_factory=dict)  # kept as written (codes)


class Eligibility(Frozen):
    """Who is in the cohort: ``column`` must hold one of ``levels``; rows in ``include`` are eligible."""

    column: RawName
    levels: dict[StrictStr, StrictStr] = Field(min_length=1)  # value -> meaning (the data dictionary)
    include: tuple[StrictStr, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _include_is_declared(self) -> Eligibility:
        undeclared = [v for v in self.include if v not in self.levels]
        if undeclared:
            raise ValueError(f"include {undeclared} is not among levels {list(self.levels)}")
        return self


class LongTable(Frozen):
    """A long table (one row per participant and session) whose scores become canonical columns."""

    path: RelativePath
    id_column: RawName = "participant_id"
    session_column: RawName = "session_id"
    measures: dict[RawName, dict[StrictStr, CanonicalName]] = Field(min_length=1)  # column -> {session -> canon}
    ignore_sessions: tuple[StrictStr, ...] = ()

    @property
    def sessions(self) -> dict[str, list[tuple[str, str]]]:
        """session -> [(raw measure column, canonical column)], in declaration order."""
        by_session: dict[str, list[tuple[str, str]]] = {}
        for column, sessions in self.measures.items():
            for session, canonical in sessions.items():
                by_session.setdefault(session, []).append((column, canonical))
        return by_session

    @property
    def targets(self) -> list[str]:
        """The canonical columns this table fills."""
        return [canonical for pairs in self.sessions.values() for _, canonical in pairs]

    @model_validator(mode="after")
    def _sessions_disjoint(self) -> LongTable:
        both = sorted(set(self.sessions) & set(self.ignore_sessions))
        if both:
            raise ValueError(f"sessions {both} are both mapped in 'measures' and listed in 'ignore_sessions'")
        return self


class BidsAdapter(Frozen):
    """How one BIDS dataset maps onto the staged frame (the ``adapter:`` section of a source file)."""

    # on top of the shared markers (pipeline/missing.py), which already hold BIDS' own "n/a"
    missing_values: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = ()
    participants: ParticipantsTable
    eligibility: Eligibility
    phenotype: tuple[LongTable, ...] = ()
    constants: dict[CanonicalName, StrictStr | StrictInt | StrictFloat] = Field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """Every canonical column the adapter fills, in staged-frame order (after ``patient_id``)."""
        names = [*self.participants.numeric.values(), *self.participants.text.values()]
        for table in self.phenotype:
            names += table.targets
        return [*names, *self.constants]

    @model_validator(mode="after")
    def _consistent(self) -> BidsAdapter:
        targets = self.targets
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"canonical columns filled more than once: {twice}")
        reserved = sorted(RESERVED_COLUMNS & set(targets))
        if reserved:
            raise ValueError(f"{reserved} are filled by the adapter itself and cannot be mapped")
        paths = [self.participants.path, *(t.path for t in self.phenotype)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"each table must be a different file, got {paths}")
        return self


def _https(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError(f"'{value}' must be an https:// url")
    return value


HttpsUrl = Annotated[str, AfterValidator(_https)]


class RemoteFile(Frozen):
    """One file of the release: where it goes, what it must hash to, and where it is published."""

    path: RelativePath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: PositiveInt  # bytes; also bounds how much a download may read
    urls: tuple[HttpsUrl, ...] = Field(min_length=1)  # tried in order


class BidsSourceSpec(Frozen):
    """A ``kind: bids_phenotype`` source file: a pinned public BIDS release, its files, and its adapter.

    ``trd fetch`` reads the release part (pipeline/fetch.py), the clean stage the adapter and ``categorical``
    (the shape synthetic.yaml uses: raw codes per canonical level, read by the shared harmonisation).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: Literal["bids_phenotype"]
    title: str = Field(min_length=1)
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    doi: str = Field(pattern=r"^10\.\d{4,9}/\S+$")
    licence: str = Field(min_length=1)
    registration: str | None = Field(default=None, pattern=r"^NCT\d{8}$")
    homepage: HttpsUrl
    citation: str = Field(min_length=1)
    files: tuple[RemoteFile, ...] = Field(min_length=1)
    adapter: BidsAdapter
    categorical: dict[str, CategoricalMap] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _files_consistent(self) -> BidsSourceSpec:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"files lists a path twice: {sorted({p for p in paths if paths.count(p) > 1})}")
        tables = [self.adapter.participants.path, *(t.path for t in self.adapter.phenotype)]
        unverified = [t for t in tables if t not in paths]
        if unverified:
            raise ValueError(f"adapter tables {unverified} are not in files (every file read must be checksummed)")
        return self


def load_bids_spec(path: Path) -> BidsSourceSpec:
    """Read and check a ``kind: bids_phenotype`` source file; any problem is a ConfigError naming it."""
    path = Path(path)
    try:
        spec = BidsSourceSpec.model_validate(load_yaml_spec(path))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, prefix=path.stem), file=path) from None
    if spec.name != path.stem:
        raise ConfigError(f"name '{spec.name}' differs from the file name '{path.stem}'", file=path)
    return spec
