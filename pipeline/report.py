"""Stage ``report@<task>``: a model card per task, structured by TRIPOD+AI and generated only from the pipeline's
own outputs, so it can never disagree with the numbers.

Inputs (read, never written): the task's params, the canonical schema (``configs/cohort_schema.yaml``), the source
configs (``configs/sources/*.yaml``: the public data set's DOI, licence and citation), the cleaning report, the
split counts, the planted effects of the synthetic generator, the model bundle's ``model_info.json`` and
``feature_spec.json``, the cross-validation metrics, what ``evaluate`` writes (``reports/<task>/evaluation/``),
what ``explain`` writes (``reports/<task>/explain/``), the MLflow registry entry whose ``estimator_sha256`` tag
matches the bundle, the git commit, and the data hashes DVC recorded in ``dvc.lock``. A stage cannot depend on
``dvc.lock`` (it changes when the stage runs), so the hashes are read at run time and the card says which upstream
outputs they identify.

Outputs: ``reports/<task>/model_card.md`` and ``reports/<task>/model_card.html`` (self-contained: figures embedded
as base64 PNG data URIs, inline CSS, no script), both logged to the task's MLflow training run.

How the numbers stay checkable. The card is built once as a small document model (:class:`Document`: headings,
paragraphs, lists, tables, figures) and rendered twice, to Markdown and to HTML, so the two cannot differ. Every
result is a table cell rendered by :func:`fmt_number`, and every table holding numbers says where each cell came
from, in one of three forms that ``tests/test_report.py`` parses back and compares with the files:

* a ``source`` column per row, ``<file>#<dotted key>`` (an interval cell ``[lower, upper]`` reads ``<key>_lower``
  and ``<key>_upper``), or ``computed: …`` / ``MLflow …`` / ``git …`` for values that are not in a file;
* a ``Source:`` line naming a CSV file and the CSV columns in the table's column order, one table row per file row;
* a ``Source:`` line naming a JSON file and a key template in which ``{row}`` is the code in the row's first cell
  and ``{col}`` the listed column key (``key[ci]`` reads ``key_lower`` and ``key_upper``).

Prose states no result of its own in numbers: it words readings from the intervals ("the interval includes 0.5").
The only numbers in prose are params (the search space) and text quoted verbatim from other stages (the evaluate
stage's limitations, the registry gate's reasons). Prose is written with a tiny inline markup (```code```,
``**strong**``, ``[text](url)``) that :func:`text` parses; text read from input files is never parsed.

Deterministic: the same inputs give the same bytes. The MLflow registry (whose version number moves on every
retrain) and the git commit are inputs too, and the card says so where it shows them.

Pure core: :func:`build_card` (typed inputs in, a :class:`Document` out), :func:`render_markdown`,
:func:`render_html`. ``main`` gathers the inputs (:func:`gather_inputs`), writes both files atomically and logs them
to MLflow.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from pydantic import Field

from pipeline import metrics, sample_size
from pipeline.contract import PREDICTOR_ROLES, TIMING_ORDER, CohortContract, ColumnSpec
from pipeline.errors import ConfigError, PipelineError
from pipeline.features import FeatureSpec
from pipeline.params import Frozen
from pipeline.tasks import risk_band_label

if TYPE_CHECKING:  # train and split import scikit-learn and XGBoost; only the types are needed here
    from pipeline.modelling.params import TrainParams
    from pipeline.split import SplitParams
    from pipeline.tasks import TaskOutcome, TaskSpec

log = logging.getLogger(__name__)

PARAMS_USED = ("tasks.{task}", "split", "train", "report")

MARKDOWN_FILE = "model_card.md"
HTML_FILE = "model_card.html"
MLFLOW_ARTIFACT_PATH = "model_card"
CHAMPION_ALIAS = "champion"
NOT_IN_REGISTRY = "not found in the MLflow registry at build time"
NA = "–"  # a missing number: an en dash, never a digit, so it cannot be mistaken for a value
EXTERNAL_COHORT = "ds005917"  # the public cohort whose source config the card cites
PARAMS_FILE = "params.yaml"
# the train stage's CV AUROC interval uses metrics.bootstrap_ci at its default level (cv_metrics.json does not say)
CV_INTERVAL_LEVEL: float = inspect.signature(metrics.bootstrap_ci).parameters["level"].default

# the evaluate and explain figures embedded in the card, in reading order (others in those folders are left out:
# waterfall plots show single patients, dependence plots are many)
EVALUATION_FIGURES = ("roc.png", "calibration.png", "precision_recall.png", "decision_curve.png")
EXPLAIN_FIGURES = ("importance_bar.png", "beeswarm.png", "fidelity.png")

# how each candidate family of pipeline/train.py (make_estimator) is named and handles a missing predictor
CANDIDATE_NAMES = {
    "logreg": "L2-penalised logistic regression",
    "logreg_spline": "L2-penalised logistic regression on restricted cubic splines with declared products",
    "xgboost": "gradient-boosted trees (XGBoost)",
    "hist_gb": "histogram gradient boosting (scikit-learn)",
}
MISSING_HANDLING = {
    "logreg": "replaces a missing predictor by its training-split median and adds a missingness indicator for each "
    "predictor that had missing values in training, then standardises every column",
    "logreg_spline": "replaces a missing predictor by its training-split median (before the spline and product terms) "
    "and adds a missingness indicator for each predictor that had missing values in training, then standardises "
    "every column",
    "xgboost": "handles missing values natively: at every split a missing value follows the default branch learned "
    "in training; nothing is imputed",
    "hist_gb": "handles missing values natively: at every split a missing value follows the branch learned in "
    "training; nothing is imputed",
}

# The literature behind the generator's parameters, copied from docs/literature.md §10; every
# parameter in params.yaml `synthesize:` cites its row there. Static citations, not results.
GENERATOR_REFERENCES: tuple[tuple[str, str | None], ...] = (
    (
        "Han Y et al. Efficacy of ketamine in the rapid treatment of MDD: meta-analysis. Neuropsychiatr Dis Treat "
        "2016;12:2859–67 (acute response rates).",
        "10.2147/NDT.S117146",
    ),
    (
        "Niciu MJ et al. Clinical predictors of ketamine response in TRD. J Clin Psychiatry 2014;75(5):e417–23 "
        "(BMI, family history of alcohol use disorder, suicide attempts).",
        "10.4088/JCP.13m08698",
    ),
    (
        "Price RB et al. International pooled patient-level meta-analysis of ketamine infusion for depression. "
        "Mol Psychiatry 2022;27:5096–5112 (population, moderators).",
        "10.1038/s41380-022-01757-7",
    ),
    (
        "Benefit–risk tables for esketamine (TRANSFORM-1/2/3). Clin Pharmacol Ther 2021;109(2):536–46 (esketamine "
        "response, older adults).",
        "10.1002/cpt.2024",
    ),
    (
        "McInnes LA et al. Retrospective analysis of ketamine IV therapy in real-world care settings. J Affect "
        "Disord 2022 (real-world response and durability).",
        "10.1016/j.jad.2021.12.097",
    ),
    (
        "Andrashko V et al. Antidepressant effect of ketamine dampened by benzodiazepines. Front Psychiatry "
        "2020;11:844 (benzodiazepine dose).",
        "10.3389/fpsyt.2020.00844",
    ),
    (
        "Leucht S et al. Translating the HAM-D into the MADRS and vice versa with equipercentile linking. J Affect "
        "Disord 2018, PMID 29031182 (scale conversions).",
        None,
    ),
    (
        "Sajjadian M et al. Machine learning in the prediction of depression treatment outcomes: systematic review "
        "and meta-analysis. Psychol Med 2021;51(16):2742–51 (what honestly validated models reach).",
        "10.1017/S0033291721003871",
    ),
)
METHOD_REFERENCES: tuple[tuple[str, str | None], ...] = (
    (
        "Collins GS et al. TRIPOD+AI statement: updated guidance for reporting clinical prediction models that use "
        "regression or machine learning methods. BMJ 2024;385:e078378.",
        "10.1136/bmj-2023-078378",
    ),
    (
        "Riley RD et al. Calculating the sample size required for developing a clinical prediction model. "
        "BMJ 2020;368:m441.",
        None,
    ),
    ("Moons KGM et al. TRIPOD explanation and elaboration. Ann Intern Med 2015;162:W1–W73.", "10.7326/M14-0698"),
)


class ReportParams(Frozen):
    """The ``report`` section of params.yaml."""

    anticipated_c: float | None = Field(
        default=None,
        gt=0.5,
        lt=1.0,
        description="Anticipated C statistic for the Riley sample-size criteria; null = the champion's CV AUROC.",
    )


# --------------------------------------------------------------------------------------------------------------
# the document model: built once, rendered to Markdown and to HTML
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Link:
    text: str
    href: str


@dataclass(frozen=True)
class Strong:
    text: str


Inline = str | Code | Link | Strong  # a str is plain text: escaped when rendered, never interpreted
Text = tuple[Inline, ...]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str


@dataclass(frozen=True)
class Paragraph:
    content: Text


@dataclass(frozen=True)
class Bullets:
    items: tuple[Text, ...]


@dataclass(frozen=True)
class Quote:
    paragraphs: tuple[Text, ...]
    kind: str = "note"  # "warning" draws the research-use banner


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Text, ...], ...]
    source: Text | None = None  # the provenance line under a grid table


@dataclass(frozen=True)
class Figure:
    png: bytes
    href: str  # relative to the card's folder: the Markdown links the file, the HTML embeds the bytes
    alt: str
    caption: Text


Block = Heading | Paragraph | Bullets | Quote | Table | Figure


@dataclass(frozen=True)
class Document:
    title: str
    blocks: tuple[Block, ...]


_MARKUP = re.compile(r"\\(.)|`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")
_MARKUP_CHARACTERS = re.compile(r"([\\`*\[\]])")


def lit(value: object) -> str:
    """A value from an input file, escaped so that :func:`text` keeps it as plain text."""
    return _MARKUP_CHARACTERS.sub(r"\\\1", str(value))


def text(*parts: str | Inline) -> Text:
    """Inline content; markup in string parts (`code`, **strong**, [text](url)) becomes the matching inline.

    A backslash keeps the next character literal (:func:`lit` escapes values read from files).
    """
    out: list[Inline] = []
    for part in parts:
        if not isinstance(part, str):
            out.append(part)
            continue
        position = 0
        for match in _MARKUP.finditer(part):
            if match.start() > position:
                out.append(part[position : match.start()])
            literal, code, strong, link_text, href = match.groups()
            if literal is not None:
                out.append(literal)
            elif code is not None:
                out.append(Code(code))
            elif strong is not None:
                out.append(Strong(strong))
            else:
                out.append(Link(link_text, href))
            position = match.end()
        if position < len(part):
            out.append(part[position:])
    return tuple(out)


def plain(value: str) -> Text:
    """Text taken from an input file: never interpreted as markup."""
    return (value,)


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


# --------------------------------------------------------------------------------------------------------------
# numbers: one formatting function for every number in the card
# --------------------------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return math.isfinite(float(value))


def fmt_number(value: Any, digits: int) -> str:
    """``value`` with exactly ``digits`` decimals (ASCII minus, never "-0.00"); NA when missing or not finite."""
    if not _finite(value):
        return NA
    out = f"{float(value):.{digits}f}"
    return out.removeprefix("-") if float(out) == 0 else out


def fmt_interval(lower: Any, upper: Any, digits: int) -> str:
    """``[lower, upper]``, or "no interval" when a bound is missing."""
    if not (_finite(lower) and _finite(upper)):
        return "no interval"
    return f"[{fmt_number(lower, digits)}, {fmt_number(upper, digits)}]"


def lookup(data: Any, key: str) -> Any:
    """The value at a dotted key (list positions as integers); None when any part is missing."""
    node = data
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def level_header(level: float) -> str:
    return f"{level * 100:g} % CI"


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sourced:
    """A parsed input and its path relative to the project root (what the card cites)."""

    path: str
    data: Any


@dataclass(frozen=True)
class RegistryInfo:
    """The MLflow registry entry of the bundle, found by its estimator hash, or why it was not found."""

    name: str
    version: str | None = None
    champion_version: str | None = None  # the version the `champion` alias points to, if any
    run_id: str | None = None
    gate: str | None = None  # "passed" or "refused" (version tag written by the train stage)
    gate_reasons: str | None = None
    training_git_sha: str | None = None
    reason: str | None = None  # why nothing was found

    @property
    def found(self) -> bool:
        return self.version is not None

    @property
    def holds_champion(self) -> bool:
        return self.found and self.champion_version == self.version


@dataclass(frozen=True)
class LockEntry:
    stage: str
    path: str
    md5: str


@dataclass(frozen=True)
class ExplainInputs:
    fidelity: Sourced  # fidelity.json
    explanation: Sourced  # explanation.json
    importance: Sourced  # importance.csv (a DataFrame)
    signs: Sourced | None  # sign_checks.csv (a DataFrame); absent without a planted truth
    figures: dict[str, tuple[str, bytes]]  # file name -> (path relative to the card, PNG bytes)


@dataclass(frozen=True)
class CardInputs:
    """Everything the card is made of, read before anything is rendered."""

    task: str
    task_spec: TaskSpec
    split: SplitParams
    train: TrainParams
    params: ReportParams
    raw_params: dict[str, Any]  # params.yaml as read: the card cites the keys it shows
    contract: CohortContract
    sources: dict[str, Sourced]  # configs/sources/<name>.yaml
    cleaning: Sourced
    planted: Sourced | None
    split_counts: Sourced
    model_info: Sourced
    feature_spec: FeatureSpec
    feature_spec_path: str
    cv: Sourced
    metrics: Sourced  # evaluation/metrics.json
    evaluation: Sourced  # evaluation/evaluation.json
    thresholds: Sourced  # evaluation/thresholds.csv
    subgroups: Sourced  # evaluation/subgroups.csv
    decision_curve: Sourced  # evaluation/plots/decision_curve.csv
    figures: dict[str, tuple[str, bytes]]  # evaluation figures: name -> (path relative to the card, bytes)
    explain: ExplainInputs | None
    registry: RegistryInfo
    lock: tuple[LockEntry, ...]

    @property
    def registered_name(self) -> str:
        return str(self.model_info.data["registered_model_name"])

    @property
    def champion(self) -> str:
        return str(self.model_info.data["candidate"])

    @property
    def level(self) -> float:
        """The confidence level of every test-split and external interval (checked present on gathering)."""
        return float(lookup(self.evaluation.data, "intervals.level"))

    @property
    def params_file(self) -> Sourced:
        return Sourced(PARAMS_FILE, self.raw_params)

    @property
    def target(self) -> ColumnSpec:
        return self.contract.column(self.task_spec.target)

    def external_report(self) -> dict[str, Any]:
        return lookup(self.evaluation.data, "external_validation") or {}

    @property
    def development(self) -> tuple[str, ...]:
        """The development cohort(s): what the train stage recorded, else split.training_cohort."""
        recorded = lookup(self.cv.data, "protocol.development_cohorts")
        return tuple(recorded) if recorded else self.split.cohorts

    @property
    def synthetic_development(self) -> bool:
        """Developed on the synthetic cohort alone (the only development data with a known truth)."""
        return self.development == (SYNTHETIC,)

    @property
    def development_name(self) -> str:
        """How the card names the development data: 'synthetic', or the cohort names ('clinic_a + clinic_b')."""
        return " + ".join(self.development)

    @property
    def held_out(self) -> bool:
        """A test split exists (none under the small-cohort protocol)."""
        return bool(get(self.split_counts, "test.n"))

    @property
    def underpowered(self) -> bool:
        """Trained below the Riley minimum with train.sample_size.override."""
        return bool(lookup(self.cv.data, "protocol.underpowered"))


def get(file: Sourced, key: str) -> Any:
    return lookup(file.data, key)


SYNTHETIC = "synthetic"  # the generator's cohort: the only development data with a planted truth


# --------------------------------------------------------------------------------------------------------------
# tables in the three machine-checkable forms
# --------------------------------------------------------------------------------------------------------------


@dataclass
class KeyedTable:
    """Rows of (label, value [, interval], source), each value read from one key of one file."""

    label: str
    level: float | None = None  # with a level: an interval column
    rows: list[tuple[Text, ...]] = field(default_factory=list)

    def _add(self, label: str | Text, value: str, interval: str, source: str) -> None:
        cells = [text(label) if isinstance(label, str) else label, plain(value)]
        if self.level is not None:
            cells.append(plain(interval))
        cells.append((Code(source),))
        self.rows.append(tuple(cells))

    def number(
        self,
        label: str | Text,
        file: Sourced,
        key: str,
        digits: int,
        *,
        interval: bool = False,
        bounds: tuple[str, str] | None = None,
    ) -> None:
        """A number and, with ``interval``, its interval from ``<key>_lower``/``<key>_upper`` or from ``bounds``."""
        shown, source = "", f"{file.path}#{key}"
        if interval or bounds:
            lower, upper = bounds or (f"{key}_lower", f"{key}_upper")
            shown = fmt_interval(get(file, lower), get(file, upper), digits)
            if bounds:  # other keys than the convention: the source cell names them
                source += f" [#{lower}, #{upper}]"
        self._add(label, fmt_number(get(file, key), digits), shown, source)

    def string(self, label: str | Text, file: Sourced, key: str) -> None:
        value = get(file, key)
        self._add(label, NA if value is None else str(value), "", f"{file.path}#{key}")

    def computed(self, label: str | Text, value: Any, digits: int, how: str) -> None:
        shown = value if isinstance(value, str) else fmt_number(value, digits)
        self._add(label, shown, "", f"computed: {how}")

    def other(self, label: str | Text, value: str, where: str) -> None:
        """A value from outside the files (the MLflow registry, git): cited, not checkable against a file."""
        self._add(label, value, "", where)

    def table(self) -> Table:
        if self.level is None:
            header: tuple[str, ...] = (self.label, "value", "source")
        else:
            header = (self.label, "estimate", level_header(self.level), "source")
        return Table(header, tuple(self.rows))


@dataclass(frozen=True)
class Column:
    """One grid column: its source column or key, its header, and its decimals (None: text)."""

    key: str
    header: str
    digits: int | None = None


def _cell(value: Any, digits: int | None) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if digits is None:
        return str(value).strip() or NA
    return fmt_number(value, digits)


def _listed(columns: Sequence[Column]) -> list[Inline]:
    out: list[Inline] = []
    for i, column in enumerate(columns):
        out += [", " if i else "", Code(column.key)]
    return out


def csv_table(file: Sourced, columns: Sequence[Column]) -> Table:
    """Every row of a CSV file, in file order; the source line names the file and the columns shown."""
    frame: pd.DataFrame = file.data
    columns = [c for c in columns if c.key in frame.columns]
    rows = tuple(
        tuple(plain(_cell(record[c.key], c.digits)) for c in columns) for record in frame.to_dict(orient="records")
    )
    source = ("Source: ", Code(file.path), " (rows in file order; columns ", *_listed(columns), ").")
    return Table(tuple(c.header for c in columns), rows, source)


def json_grid(
    file: Sourced, row_header: str, rows: Sequence[tuple[str, str]], template: str, columns: Sequence[Column]
) -> Table:
    """Cell (row, column) reads ``template`` with ``{row}`` and ``{col}`` filled in; ``key[ci]`` is an interval.

    ``rows`` are (key, label) pairs; the first cell shows the key as code (what a checker substitutes). A count
    (0 decimals) absent from the file is shown as "none": the cleaning report lists only columns with a count.
    """
    body = []
    for row_key, label in rows:
        cells: list[Text] = [(Code(row_key), f" ({label})") if label else (Code(row_key),)]
        for column in columns:
            if column.key.endswith("[ci]"):
                base = template.format(row=row_key, col=column.key.removesuffix("[ci]"))
                shown = fmt_interval(get(file, f"{base}_lower"), get(file, f"{base}_upper"), column.digits or 3)
            else:
                value = get(file, template.format(row=row_key, col=column.key))
                shown = "none" if value is None and column.digits == 0 else _cell(value, column.digits)
            cells.append(plain(shown))
        body.append(tuple(cells))
    source = (
        "Source: ",
        Code(file.path),
        "; the cell in row ",
        Code("{row}"),
        " and column ",
        Code("{col}"),
        " reads ",
        Code(template),
        " (columns ",
        *_listed(columns),
        ").",
    )
    return Table((row_header, *(c.header for c in columns)), tuple(body), source)


# --------------------------------------------------------------------------------------------------------------
# readings: words from intervals, never beyond them
# --------------------------------------------------------------------------------------------------------------


def sentence(value: str) -> str:
    """The first letter in upper case: readings are phrases that also start sentences."""
    return value[:1].upper() + value[1:]


def interval_reading(lower: Any, upper: Any, null: float, *, below: str, inside: str, above: str, missing: str) -> str:
    """Which side of ``null`` the interval lies on, in the words given for each case."""
    if not (_finite(lower) and _finite(upper)):
        return missing
    if float(lower) > null:
        return above
    if float(upper) < null:
        return below
    return inside


def card_subject(inputs: CardInputs) -> str:
    """'response to ketamine' for the response tasks, else the task's own wording ('risk of a blood-pressure ...')."""
    wording = vocab(inputs).wording
    return "response to ketamine" if wording == "probability of response" else f"the {wording} with ketamine"


def vocab(inputs: CardInputs) -> TaskOutcome:
    """The task's words for its outcome ('responders', 'risk of a blood-pressure event', ...)."""
    return inputs.task_spec.outcome


def discrimination_reading(inputs: CardInputs) -> str:
    m, split = inputs.metrics, f"the {inputs.development_name} test split"
    return interval_reading(
        get(m, "test.auroc_lower"),
        get(m, "test.auroc_upper"),
        0.5,
        below=f"the champion ranks the patients of {split} worse than chance (its AUROC interval lies below 0.5)",
        inside=f"the champion cannot be distinguished from chance on {split} (its AUROC interval includes 0.5)",
        above=f"the champion ranks {vocab(inputs).events} above {vocab(inputs).non_events} better than chance on "
        f"{split} (its AUROC interval lies above 0.5)",
        missing="the test AUROC has no interval, so it cannot be interpreted",
    )


def oracle_reading(inputs: CardInputs) -> str:
    """Against the predictors-only reference (what these predictors allow) when there is one, else the
    generating probability."""
    if get(inputs.metrics, "gap_predictors") is not None:
        return interval_reading(
            get(inputs.metrics, "gap_predictors.auroc_lower"),
            get(inputs.metrics, "gap_predictors.auroc_upper"),
            0.0,
            below="the champion ranks patients less well than the predictors-only reference (the best probability "
            "these predictors allow): the paired interval of the AUROC difference lies below 0, so the predictors "
            "hold information this model misses",
            inside="the champion cannot be distinguished from the predictors-only reference (the best probability "
            "these predictors allow): the paired interval of the AUROC difference includes 0, so little is left to "
            "gain from these predictors",
            above="the champion ranks patients better than the predictors-only reference beyond noise: possible only "
            "through information the reference lacks (cleaned labels differ from the generator's for a few patients, "
            "and only patients with a known outcome are scored) or through leakage",
            missing="the difference from the predictors-only reference has no interval",
        )
    if get(inputs.metrics, "gap") is None:
        reason = lookup(inputs.evaluation.data, "oracle.reason") or "the oracle was unavailable"
        if not inputs.synthetic_development and inputs.held_out:  # the generator knows nothing of this cohort
            reason = f"{inputs.development_name} has no synthetic truth"
        return f"no comparison with the oracle: {reason}"
    return interval_reading(
        get(inputs.metrics, "gap.auroc_lower"),
        get(inputs.metrics, "gap.auroc_upper"),
        0.0,
        below="the champion ranks patients less well than the generating probability (which also knows the site): "
        "the paired interval of the AUROC difference lies below 0",
        inside="the champion cannot be distinguished from the generating probability: the paired interval of the "
        "AUROC difference includes 0",
        above="the champion ranks patients better than the generating probability beyond noise, which only leakage "
        "can explain",
        missing="the difference from the oracle has no interval",
    )


def internal_reading(inputs: CardInputs) -> str:
    """What the optimism-corrected figures say, in words, and how the held-out split compares."""
    m = inputs.metrics
    if get(m, "internal_validation.auroc") is None:
        return "no internal validation of the whole development sample is recorded"
    slope = interval_reading(
        get(m, "internal_validation.calibration_slope.corrected_lower"),
        get(m, "internal_validation.calibration_slope.corrected_upper"),
        1.0,
        below="its calibration slope interval lies below 1 (predictions too extreme once optimism is removed)",
        inside="its calibration slope interval includes 1",
        above="its calibration slope interval lies above 1 (predictions too moderate)",
        missing="its calibration slope has no interval",
    )
    corrected = get(m, "internal_validation.auroc.corrected")
    lower, upper = get(m, "test.auroc_lower"), get(m, "test.auroc_upper")
    agreement = (
        "the held-out AUROC interval contains the optimism-corrected AUROC"
        if all(_finite(v) for v in (corrected, lower, upper)) and float(lower) <= float(corrected) <= float(upper)
        else "the held-out AUROC interval does not contain the optimism-corrected AUROC: one held-out split is noisy, "
        "and the bootstrap may under-correct a flexible model"
    )
    return (
        "the optimism-corrected AUROC interval "
        + ("lies above 0.5" if _finite(get(m, "internal_validation.auroc.corrected_lower"))
           and float(get(m, "internal_validation.auroc.corrected_lower")) > 0.5 else "includes 0.5")
        + f"; {slope}; {agreement}"
    )  # fmt: skip


def selection_reading(inputs: CardInputs) -> str:
    """Whether the test split would have picked another candidate (it never chooses: selection is by CV)."""
    candidates = get(inputs.metrics, "test.candidates") or {}
    scored = {name: c.get("auroc") for name, c in candidates.items() if _finite(c.get("auroc"))}
    if not scored:
        return ""
    best = max(sorted(scored), key=lambda name: scored[name])
    if best == inputs.champion or scored[best] == scored.get(inputs.champion):
        return "The champion also has the highest test AUROC of the candidates."
    return (
        f"The candidate with the highest test AUROC is {best} ({candidate_name(best)}), not the champion: the "
        "champion was fixed by cross-validation before the test split was seen, and is kept; compare the candidates' "
        "intervals in the table before reading anything into the difference."
    )


def calibration_reading(inputs: CardInputs) -> str:
    m = inputs.metrics
    slope = interval_reading(
        get(m, "test.calibration_slope_lower"),
        get(m, "test.calibration_slope_upper"),
        1.0,
        below="the calibration slope interval lies below 1: predictions are too extreme (over-fitting)",
        inside="the calibration slope interval includes 1: no evidence of over- or under-fitting",
        above="the calibration slope interval lies above 1: predictions are too moderate (under-fitting)",
        missing="the calibration slope has no interval",
    )
    in_the_large = interval_reading(
        get(m, "test.calibration_in_the_large_lower"),
        get(m, "test.calibration_in_the_large_upper"),
        0.0,
        below=f"calibration-in-the-large lies below 0: on average the model over-predicts the {vocab(inputs).rate}",
        inside="calibration-in-the-large includes 0: the average predicted probability matches the observed rate",
        above=f"calibration-in-the-large lies above 0: on average the model under-predicts the {vocab(inputs).rate}",
        missing="calibration-in-the-large has no interval",
    )
    return f"{slope}; {in_the_large}"


def external_reading(inputs: CardInputs) -> str:
    report = inputs.external_report()
    if not report.get("available"):
        return f"no external validation for this task ({report.get('reason', 'not run')})"
    return interval_reading(
        get(inputs.metrics, "external.auroc_lower"),
        get(inputs.metrics, "external.auroc_upper"),
        0.5,
        below="on the real trial patients the model ranks worse than chance (the AUROC interval lies below 0.5)",
        inside="the real cohort neither supports nor refutes the model: its AUROC interval includes 0.5",
        above="on the real trial patients the AUROC interval lies above 0.5, consistent with better-than-chance "
        "ranking; with so few events the size of the effect is uncertain",
        missing="the external AUROC has no interval (too few events or non-events), so it cannot be interpreted",
    )


# --------------------------------------------------------------------------------------------------------------
# sample size (Riley et al. BMJ 2020;368:m441; docs/literature.md §7c) and the decision curve
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSizeCheck:
    parameters: int
    n_train: int
    events_train: int
    prevalence: float
    c_statistic: float | None
    c_from_params: bool
    riley: sample_size.RileySampleSize | None
    reason: str | None  # why Riley could not be computed


def sample_size_check(inputs: CardInputs) -> SampleSizeCheck:
    """Riley's minimum development size: P = feature columns, φ = training prevalence, C stated or the CV AUROC."""
    parameters = len(inputs.feature_spec.feature_names)
    n_train = int(get(inputs.cv, "n_train"))
    events = int(get(inputs.cv, "events_train"))
    prevalence = events / n_train if n_train else math.nan
    from_params = inputs.params.anticipated_c is not None
    c_statistic = (
        inputs.params.anticipated_c if from_params else get(inputs.cv, f"candidates.{inputs.champion}.cv_auroc")
    )
    riley, reason = None, None
    if not _finite(c_statistic):
        reason = "no anticipated C statistic (the champion's CV AUROC is missing)"
    else:
        try:
            riley = sample_size.riley_sample_size(parameters=parameters, prevalence=prevalence, c_statistic=c_statistic)
        except ConfigError as exc:
            reason = exc.message
    return SampleSizeCheck(
        parameters=parameters,
        n_train=n_train,
        events_train=events,
        prevalence=prevalence,
        c_statistic=float(c_statistic) if _finite(c_statistic) else None,
        c_from_params=from_params,
        riley=riley,
        reason=reason,
    )


def net_benefit_ranges(curve: pd.DataFrame) -> list[tuple[float, float]]:
    """Runs of consecutive thresholds where the model's net benefit exceeds both treat-all and treat-none."""
    best_default = curve[["net_benefit_treat_all", "net_benefit_treat_none"]].max(axis=1)
    better = (curve["net_benefit_model"] > best_default).to_numpy()
    thresholds = curve["threshold"].to_numpy(dtype="float64")
    ranges: list[tuple[float, float]] = []
    start: int | None = None
    for i, flag in enumerate([*better, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            ranges.append((float(thresholds[start]), float(thresholds[i - 1])))
            start = None
    return ranges


def fmt_ranges(ranges: list[tuple[float, float]]) -> str:
    if not ranges:
        return "none"
    return "; ".join(
        fmt_number(low, 2) if low == high else f"{fmt_number(low, 2)} to {fmt_number(high, 2)}" for low, high in ranges
    )


# --------------------------------------------------------------------------------------------------------------
# the sections
# --------------------------------------------------------------------------------------------------------------

SECTIONS: tuple[tuple[str, str], ...] = (
    ("identity", "Model identity and version"),
    ("summary", "Summary"),
    ("intended_use", "Intended use and users"),
    ("out_of_scope", "Out-of-scope use"),
    ("data", "Data sources"),
    ("flow", "Participants: eligibility and flow"),
    ("outcome", "Outcome: definition and timing"),
    ("predictors", "Predictors and their timing"),
    ("sample_size", "Sample size (Riley criteria)"),
    ("missing", "Missing data"),
    ("model", "Model specification and tuning"),
    ("performance", "Internal validation, discrimination and calibration against the references"),
    ("decision", "Decision curve and thresholds"),
    ("subgroups", "Subgroups"),
    ("external", "External validation and negative control"),
    ("shap", "Explanations (SHAP): summary and fidelity"),
    ("limitations", "Limitations"),
    ("open_science", "Usability, ethics and open science"),
    ("checklist", "TRIPOD+AI checklist"),
    ("provenance", "Provenance"),
)
SECTION_TITLES = {key: f"{i}. {title}" for i, (key, title) in enumerate(SECTIONS, start=1)}


def anchor(key: str) -> str:
    return slug(SECTION_TITLES[key])


def ref(key: str) -> str:
    """Markup for a link to a section: '[§9 Sample size (Riley criteria)](#9-sample-size-riley-criteria)'."""
    number, title = SECTION_TITLES[key].split(". ", 1)
    return f"[§{number} {title}](#{anchor(key)})"


def heading(key: str) -> Heading:
    return Heading(2, SECTION_TITLES[key], anchor(key))


def sub(title: str) -> Heading:
    return Heading(3, title, slug(title))


def para(*parts: str | Inline) -> Paragraph:
    return Paragraph(text(*parts))


def codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def citation(reference: str, doi: str | None) -> Text:
    return (reference, *((" ", Link(f"doi:{doi}", f"https://doi.org/{doi}")) if doi else ()))


def figure(figures: dict[str, tuple[str, bytes]], name: str, alt: str, caption: str) -> list[Block]:
    if name not in figures:
        return []
    href, png = figures[name]
    return [Figure(png, href, alt, text(caption))]


def candidate_name(candidate: str) -> str:
    return CANDIDATE_NAMES.get(candidate, candidate)


def identity_section(inputs: CardInputs) -> list[Block]:
    reg, info = inputs.registry, inputs.model_info
    table = KeyedTable("item")
    table.string("registered model name", info, "registered_model_name")
    if reg.found:
        table.other("registered model version", str(reg.version), "MLflow registry, by estimator_sha256")
        if reg.holds_champion:
            alias = "yes"
        elif reg.champion_version:
            alias = f"no: the alias points to version {reg.champion_version}"
        else:
            alias = "no: no version holds the alias"
        table.other(text(f"holds the `{CHAMPION_ALIAS}` alias"), alias, "MLflow registry")
        # where to find the run, not its id: the id differs in every store, the card must not (dvc status)
        table.other(
            "MLflow training run", f"experiment {reg.name}, the version's run (tag estimator_sha256 below)",
            "MLflow registry",
        )  # fmt: skip
        table.other("registry gate", reg.gate or NA, "MLflow model version tag gate")
        table.other("git commit of the training run", reg.training_git_sha or NA, "MLflow run tag git_sha")
    else:
        table.other("registered model version", NOT_IN_REGISTRY, "MLflow registry, by estimator_sha256")
        table.other(text(f"holds the `{CHAMPION_ALIAS}` alias"), NOT_IN_REGISTRY, "MLflow registry")
    table.string("champion candidate", info, "candidate")
    table.string("calibration", info, "calibration")
    table.string("estimator SHA-256", info, "estimator_sha256")
    table.string("training split SHA-256", info, "training_data_sha256")
    table.string("package version", info, "package_version")
    blocks: list[Block] = [
        heading("identity"),
        para(
            f"The model is the MLflow pyfunc folder `models/{inputs.task}/`, registered as `{inputs.registered_name}`. "
            "The registry entry is the one whose `estimator_sha256` tag equals the hash of the saved estimator, so "
            "this card describes exactly the estimator it names. The registry version moves on every retraining; "
            f"the data hashes that pin everything else are in {ref('provenance')}."
        ),
        table.table(),
    ]
    if reg.reason:
        blocks.append(Paragraph(("Registry lookup: ", reg.reason, ".")))
    return blocks


# the optimism-corrected measures, in the order the card shows them: key, label, decimals
VALIDATED_ROWS = (
    ("auroc", "AUROC", 3),
    ("calibration_slope", "calibration slope", 2),
    ("calibration_in_the_large", "calibration-in-the-large (log-odds)", 2),
    ("brier", "Brier score", 3),
)


def summary_section(inputs: CardInputs) -> list[Block]:
    m, cv = inputs.metrics, inputs.cv
    table = KeyedTable("measure", inputs.level)
    table.number("training patients (development data)", cv, "n_train", 0)
    table.number(f"training {vocab(inputs).events}", cv, "events_train", 0)
    if get(cv, "protocol.sample_size.minimum_n") is not None:
        table.number("Riley minimum sample size (declared C, before fitting)", cv, "protocol.sample_size.minimum_n", 0)
    internal = get(m, "internal_validation") is not None
    for key, label, digits in VALIDATED_ROWS:
        if internal:
            table.number(
                f"{label}, optimism-corrected (bootstrap, all training patients)",
                m, f"internal_validation.{key}.corrected", digits, interval=True,
            )  # fmt: skip
        if inputs.held_out:
            table.number(f"{label}, held-out test split", m, f"test.{key}", digits, interval=True)
    if inputs.held_out:
        table.number("test patients", m, "test.n", 0)
        table.number(f"test {vocab(inputs).events}", m, "test.events", 0)
    if get(m, "oracle") is not None:
        table.number(
            "AUROC of the generating probability (ceiling; knows the site), same test patients",
            m, "oracle.auroc", 3, interval=True,
        )  # fmt: skip
    if get(m, "oracle_predictors") is not None:
        table.number(
            "AUROC of the predictors-only probability (best these predictors allow), same test patients",
            m, "oracle_predictors.auroc", 3, interval=True,
        )  # fmt: skip
        table.number(
            "AUROC difference, champion − predictors-only (paired)", m, "gap_predictors.auroc", 3, interval=True
        )
    if get(m, "oracle") is not None:
        table.number("AUROC difference, champion − generating probability (paired)", m, "gap.auroc", 3, interval=True)
    if get(m, "external") is not None:
        table.number(f"external patients ({EXTERNAL_COHORT})", m, "external.n", 0)
        table.number("external responders", m, "external.events", 0)
        table.number("AUROC, external", m, "external.auroc", 3, interval=True)
    for name in sorted(get(m, "external_cohorts") or {}):
        table.number(f"external patients ({name})", m, f"external_cohorts.{name}.n", 0)
        table.number(f"AUROC, external ({name})", m, f"external_cohorts.{name}.auroc", 3, interval=True)
    readings: tuple[Text, ...] = (
        plain(sentence(internal_reading(inputs)) + "."),
        *((plain(sentence(discrimination_reading(inputs)) + "."),) if inputs.held_out else ()),
        plain(sentence(oracle_reading(inputs)) + "."),
        *((plain(sentence(calibration_reading(inputs)) + "."),) if inputs.held_out else ()),
        plain(sentence(external_reading(inputs)) + "."),
        text(
            "All development and test patients are **synthetic**: these numbers show how well the pipeline recovers "
            "a known, literature-grounded truth, not how the model would perform in a clinic."
        )
        if inputs.synthetic_development
        else text(
            f"Developed on **{inputs.development_name}**, a cohort with no synthetic truth: there is no oracle to "
            "compare with, and the numbers describe this cohort's patients only."
        ),
    )
    blocks: list[Block] = [heading("summary")]
    if inputs.underpowered:
        blocks.append(underpowered_warning(inputs))
    return [
        *blocks,
        para(
            f"{sentence(candidate_name(inputs.champion))} predicting `{inputs.task_spec.target}` "
            f"({lit(inputs.target.description.rstrip('.'))}) at the prediction time "
            f"`{inputs.task_spec.prediction_time}`. "
            "**Two validations, led by the one that uses all development data.** (1) Internal validation: the "
            "champion's whole fitting procedure (fixed hyperparameters, calibrator refitted out of fold) is repeated "
            "on bootstrap samples of the training split and the optimism it shows is subtracted from the shipped "
            "model's apparent performance (Harrell); this uses every development patient, so it is the more precise "
            "estimate. "
            + (
                "(2) Held-out test split: the shipped model on the held-out patients it never saw; honest but noisy, "
                "since one split is one draw. "
                if inputs.held_out
                else "(2) No held-out test split: below `split.small_cohort_n` patients every patient develops the "
                "model (a quarter of a small cohort is too few to judge it), so external validation is the only "
                "check on patients the model never saw. "
            )
            + (
                "**Two references** from the generator, scored on the same test patients and labels: the generating "
                "probability (the true probability given the predictors and the site: the ceiling of the "
                "data-generating process; the site is not a predictor) and the predictors-only probability (the site "
                "marginalised: the best any model of these predictors can reach)."
                if inputs.synthetic_development
                else f"No reference from a generator: {inputs.development_name} has no synthetic truth."
            )
        ),
        table.table(),
        para("**Reading the intervals** (in words; the numbers are in the table):"),
        Bullets(readings),
    ]


def underpowered_warning(inputs: CardInputs) -> Block:
    """The summary's first words for a model trained below the Riley minimum with the override."""
    cv = inputs.cv
    n, events = get(cv, "protocol.sample_size.n"), get(cv, "protocol.sample_size.events")
    minimum = get(cv, "protocol.sample_size.minimum_n")
    need = f"the Riley minimum is {minimum} patients" if minimum is not None else "the Riley criteria are undefined"
    return Quote(
        (
            text(
                f"**Underpowered.** Developed on {n} patients with {events} responders where {need} "
                f"({ref('sample_size')}); trained only because `train.sample_size.override` is set. Expect an "
                "overfitted model whose performance elsewhere is worse than any number here suggests; it never takes "
                "the registry's `champion` alias."
            ),
        ),
        kind="warning",
    )


def intended_use_section(inputs: CardInputs) -> list[Block]:
    spec = inputs.task_spec
    routes = codes(inputs.contract.column("route").levels or ())
    return [
        heading("intended_use"),
        para(
            f"**Decision point.** {lit(spec.description)} The model is used at the prediction time "
            f"`{spec.prediction_time}` "
            f"(the schema's clinical clock: {codes(TIMING_ORDER)}) and estimates the probability of "
            f"`{spec.target}`: {lit(inputs.target.description.rstrip('.'))}."
        ),
        para(
            f"**Context.** Treatment-resistant depression treated with ketamine or esketamine (routes: {routes}), with "
            "or without psychotherapy. Honestly validated models of antidepressant response reach an AUROC of "
            "roughly 0.6 to 0.7 and ketamine-specific models are small (`docs/literature.md` §3). This pipeline is a "
            "reproducible test bed for building, validating and explaining such a model."
        ),
        para(
            "**Intended users.** Researchers and clinical data scientists who study response prediction, and "
            "reviewers (methodologists, ethics boards, clinicians) who judge whether such a model is sound. "
            + (
                "**Objective.** Development and internal validation on synthetic data, with an external sanity check "
                "on a public trial where the trial records the task's outcome."
                if inputs.synthetic_development
                else f"**Objective.** Development and internal validation on {inputs.development_name}, with external "
                "validation on every other configured cohort that records the task's outcome."
            )
        ),
    ]


def out_of_scope_section(inputs: CardInputs) -> list[Block]:
    return [
        heading("out_of_scope"),
        Quote(
            (
                text(
                    "**Research use only. Not a medical device.** This model must not be used to make, support or "
                    "justify a treatment decision for any patient."
                ),
            ),
            kind="warning",
        ),
        Bullets(
            (
                text(
                    "Trained and tested on **synthetic** patients from a generator grounded in the published "
                    f"literature ({ref('data')}). No real patient contributed to its development; its behaviour on "
                    "real clinic populations is unknown."
                )
                if inputs.synthetic_development
                else text(
                    f"Developed on **{inputs.development_name}** ({ref('data')}); its behaviour on other clinics' "
                    f"populations is known only as far as the external validation goes ({ref('external')})."
                ),
                text(
                    "Not validated prospectively, not certified, and not assessed for safety or clinical benefit. The "
                    f"thresholds in {ref('decision')} illustrate the decision curve; none is recommended."
                ),
                text(
                    "Not for patients outside the schema's contract (for example bipolar depression, psychotic "
                    "features, adolescents) or for predictors recorded differently from `configs/cohort_schema.yaml`."
                ),
                text(
                    f"The explanations ({ref('shap')}) describe what the model uses, not what causes response; they "
                    "support no causal or individual treatment-effect claim."
                ),
                text(
                    "Misuse, diversion or ketamine use disorder is not modelled: no incidence in clinic cohorts was "
                    "found to ground it (literature notes §15). Pregnant or breast-feeding patients are outside the "
                    "synthetic population (excluded in the trials and advised against in the esketamine label, §14)."
                ),
                *new_columns_scope(inputs),
            )
        ),
    ]


# the columns issue 18 added: the real cohort (ds005917) records none of them
ISSUE_18_COLUMNS = (
    "hypertension_history",
    "sbp_baseline",
    "dbp_baseline",
    "postpartum_onset",
    "gad7_baseline",
    "dbp_rise_first_mmhg",
    "gad7_end",
    "anxiety_response_end",
    "bp_event_first",
)


def new_columns_scope(inputs: CardInputs) -> tuple[Text, ...]:
    """For the tasks that use them: the real cohort lacks these columns, so no external validation."""
    used = {inputs.task_spec.target, *inputs.feature_spec.input_columns} & set(ISSUE_18_COLUMNS)
    if not used:
        return ()
    return (
        text(
            f"Validated on synthetic data only: the real cohort ({EXTERNAL_COHORT}) records none of "
            f"{codes(sorted(used))}, so this task has no external validation (it stays on `acute`)."
        ),
    )


def data_section(inputs: CardInputs) -> list[Block]:
    blocks: list[Block] = [
        heading("data"),
        *development_source_blocks(inputs),
        sub("Synthetic development cohort" if inputs.synthetic_development else "Synthetic cohort"),
        para(
            "Generated by this repository's code (`pipeline/synthesize`, `trd synthesize`): no third-party data. Sites "
            "with their own case-mix, routes and psychotherapy; outcomes from MADRS trajectories driven by planted "
            "log-odds effects; the export is then damaged the way clinic exports are (missing values, other units and "
            "rating scales, codes, duplicates, impossible values) and cleaned by the same code that cleans real data. "
            "There is no accrual period: records carry simulated dates."
        ),
    ]
    if inputs.planted is not None:
        target = inputs.task_spec.target
        table = KeyedTable("generator quantity")
        table.number("patients generated", inputs.planted, "n_patients", 0)
        table.number("effect scale (multiplies every planted patient-level effect)", inputs.planted, "effect_scale", 2)
        table.number(text(f"target rate of `{target}`"), inputs.planted, f"outcomes.{target}.target_rate", 3)
        table.number(text(f"realised rate of `{target}`"), inputs.planted, f"outcomes.{target}.realised_rate", 3)
        table.number(
            text(f"oracle AUROC of `{target}` over every generated patient"),
            inputs.planted,
            f"outcomes.{target}.oracle_auroc",
            3,
        )
        blocks.append(table.table())
    blocks += [
        para(
            "Every distribution, prevalence and effect of the generator is cited next to its parameter in "
            "`params.yaml` (section `synthesize`) against the project's literature notes (`docs/literature.md`), "
            "which tag each figure as read in a source, computed from one, or estimated. The main sources:"
        ),
        Bullets(tuple(citation(reference, doi) for reference, doi in GENERATOR_REFERENCES)),
        *external_source_blocks(inputs),
    ]
    return blocks


def development_source_blocks(inputs: CardInputs) -> list[Block]:
    """The development cohort(s) other than the synthetic one: each source config's own description."""
    blocks: list[Block] = []
    for name in inputs.development:
        if name == SYNTHETIC:
            continue
        source = inputs.sources.get(name)
        described = str(get(source, "description") or get(source, "title") or "no description") if source else ""
        blocks += [
            sub(f"Development cohort: {name}"),
            para(
                f"Configured in `configs/sources/{name}.yaml`"
                + (f": {lit(described.rstrip('.'))}." if source else " (the file was not found).")
                + " Cleaned by the same code as every other source; its counts are in "
                f"{ref('flow')}. It has no synthetic truth, so no oracle or fidelity check applies to it."
            ),
        ]
    return blocks


def external_source_blocks(inputs: CardInputs) -> list[Block]:
    source = inputs.sources.get(EXTERNAL_COHORT)
    blocks: list[Block] = [sub("Public external cohort")]
    if source is None:
        return [*blocks, para(f"No source configuration for {EXTERNAL_COHORT} was found.")]
    table = KeyedTable("field")
    for label, key in (
        ("title", "title"),
        ("version", "version"),
        ("DOI", "doi"),
        ("licence", "licence"),
        ("trial registration", "registration"),
        ("homepage", "homepage"),
        ("citation", "citation"),
    ):
        table.string(label, source, key)
    links: list[Inline] = []
    if doi := get(source, "doi"):
        links += [" Data set: ", Link(f"doi:{doi}", f"https://doi.org/{doi}"), "."]
    if registration := get(source, "registration"):
        links += [" Registration: ", Link(str(registration), f"https://clinicaltrials.gov/study/{registration}"), "."]
    return [
        *blocks,
        para(
            (
                "The real cohort is used only for external validation, never for training (`split.training_cohort` "
                f"is `{inputs.development_name}`). "
                if EXTERNAL_COHORT not in inputs.development
                else "Here the real cohort is the development cohort (`split.training_cohort`), so it is not an "
                "external validation of this model. "
            )
            + "Its files are fetched from the canonical location or a mirror, checked against pinned SHA-256 sums, "
            "and never committed to the repository.",
            *links,
        ),
        table.table(),
    ]


def flow_section(inputs: CardInputs) -> list[Block]:
    cleaning, split, target = inputs.cleaning, inputs.split_counts, inputs.task_spec.target
    table = KeyedTable("step")
    for cohort in source_order(inputs):
        prefix = f"sources.{cohort}"
        table.number(f"{cohort}: rows in", cleaning, f"{prefix}.rows_in", 0)
        for reason in sorted(get(cleaning, f"{prefix}.quarantined_by_reason") or {}):
            table.number(
                text(f"{cohort}: quarantined, `{reason}`"), cleaning, f"{prefix}.quarantined_by_reason.{reason}", 0
            )
        table.number(f"{cohort}: patients kept after cleaning", cleaning, f"{prefix}.rows_kept", 0)
        capped = f"{prefix}.values_converted.converted_capped_to_madrs_range"
        if get(cleaning, capped) is not None:
            table.number(f"{cohort}: converted scores capped at the MADRS maximum", cleaning, capped, 0)
        if get(cleaning, f"{prefix}.outcomes.{target}") is not None:
            table.number(text(f"{cohort}: with a known `{target}`"), cleaning, f"{prefix}.outcomes.{target}.known", 0)
            table.number(
                f"{cohort}: of whom {vocab(inputs).events}", cleaning, f"{prefix}.outcomes.{target}.positive", 0
            )
        if cohort == inputs.development[-1]:  # after the last development cohort: the split of the pooled rows
            table.number("training split: patients", split, "train.n", 0)
            table.number(f"training split: {vocab(inputs).events}", split, "train.events", 0)
            if inputs.held_out:
                table.number("test split: patients", split, "test.n", 0)
                table.number(f"test split: {vocab(inputs).events}", split, "test.events", 0)
        if cohort == EXTERNAL_COHORT and get(inputs.metrics, "external.negative_control") is not None:
            m = inputs.metrics
            table.number(
                f"{cohort}: with a known saline (negative-control) outcome", m, "external.negative_control.n", 0
            )
            table.number(f"{cohort}: of whom saline responders", m, "external.negative_control.events", 0)
    return [
        heading("flow"),
        Paragraph(eligibility_text(inputs)),
        table.table(),
        para(
            "Characteristics of the test split by sex, age band, route, site, psychotherapy and postpartum onset "
            f"(patients and {vocab(inputs).rate} per level) are in {ref('subgroups')}."
            if inputs.held_out
            else "There is no test split, so no characteristics of one are tabulated."
        ),
    ]


def source_order(inputs: CardInputs) -> list[str]:
    """The cleaning report's sources, the training cohort first."""
    names = sorted(get(inputs.cleaning, "sources") or {})
    return sorted(names, key=lambda name: name not in inputs.development)


def eligibility_text(inputs: CardInputs) -> Text:
    who = (
        f"Synthetic cohort (`{SYNTHETIC}`): every generated patient is eligible"
        if inputs.synthetic_development
        else f"Development cohort (`{inputs.development_name}`): every patient its source config keeps is eligible"
    )
    parts = [
        f"**Eligibility.** {who}; "
        "rows are quarantined only for data-quality reasons (duplicates, impossible values, unknown codes), never "
        "clipped (the one cap: a converted HAM-D17 or QIDS-SR16 total above the MADRS maximum is set to it and "
        "counted in the cleaning report), and patients without a known outcome for this task are left out of both "
        "splits. "
        + (
            "The split is patient-level and stratified on the outcome"
            if inputs.held_out
            else "There is no test split (small-cohort protocol: fewer than `split.small_cohort_n` patients)"
        )
    ]
    if inputs.split.holdout_sites:
        parts.append(f"; whole sites form the test split ({codes(inputs.split.holdout_sites)})")
    population = inputs.task_spec.population
    if population is not None:
        parts.append(
            f". This task is for {lit(population.description)} only: other patients are left out of both splits "
            f"and `trd score` rejects them as `ineligible` (`{population.column}` missing counts as outside)"
        )
    parts.append(". ")
    source = inputs.sources.get(EXTERNAL_COHORT)
    eligibility = get(source, "adapter.eligibility") if source else None
    if eligibility:
        levels = eligibility.get("levels", {})
        include = eligibility.get("include", [])
        included = " or ".join(lit(levels.get(k, k)) for k in include)
        excluded = ", ".join(lit(v) for k, v in levels.items() if k not in include) or "no other group"
        parts.append(
            f"{EXTERNAL_COHORT}: participants with {included} are kept; {excluded} are excluded as ineligible."
        )
    return text(*parts)


OUTCOME_RULES = {
    "response": "Response is a drop of at least 50 % in MADRS from baseline; scores recorded on HAM-D17 or QIDS-SR16 "
    "are converted onto MADRS before the rule is applied (literature notes §5b).",
    "bp_event_first": "A harm outcome, derived by the cleaner from the pre-dose reading and the first session's rises "
    "(`pipeline/harmonise.py`): an SBP rise of at least 40 mmHg (the esketamine label's threshold) or a peak of at "
    "least 180 mmHg systolic or 110 mmHg diastolic (severe hypertension in the Yale review; literature notes §12). A "
    "high probability calls for closer blood-pressure monitoring or a pre-dose review, not for withholding treatment; "
    "the published spread between cohorts (mean SBP rise +3 to +16 mmHg) is planted as a site effect.",
    "anxiety_response_end": "Anxiety response is a drop of at least 50 % in GAD-7 from baseline (Hull 2022; "
    "literature notes §11). In the generator the GAD-7 change follows the depression change (partly mediated, as in "
    "KADS) with its own noise, so anxiety response tracks depression response without copying it.",
    "sustained_week8": "Sustained response is response (MADRS drop of at least 50 %) at the end of induction that "
    "still holds at week 8; its complement among responders is relapse. Psychotherapy acts only here (structured KAP "
    "planted at a relapse hazard ratio of about 0.6, a non-randomised estimate; literature notes §13). Scores on "
    "HAM-D17 or QIDS-SR16 are converted onto MADRS first (§5b).",
}


def outcome_section(inputs: CardInputs) -> list[Block]:
    target = inputs.target
    blocks: list[Block] = [
        heading("outcome"),
        para(
            f"`{target.name}`: {lit(target.description.rstrip('.'))}. Measured at `{target.timing}` on the schema's "
            f"clinical clock, after the prediction time `{inputs.task_spec.prediction_time}`. "
            + OUTCOME_RULES.get(target.name, OUTCOME_RULES["response"])
        ),
        para(
            "**Blinding.** Not applicable to the synthetic outcomes: they are generated from the planted model, not "
            f"rated by an assessor. For the public trial see its registration ({ref('data')})."
            if inputs.synthetic_development
            else f"**Blinding.** Not recorded in the pipeline's inputs for {inputs.development_name}: whether outcome "
            "assessors knew the predictors is for the cohort's own protocol to say."
        ),
    ]
    report = inputs.external_report()
    if report.get("available"):
        control = lookup(report, "negative_control.outcome")
        saline = (
            f", and to the day-2 rating after the saline infusion (`{control}`, the negative control)"
            if control
            else ""
        )
        blocks.append(
            para(
                f"In {EXTERNAL_COHORT} the same rule is applied to the day-2 rating after the ketamine infusion, "
                f"against the single pre-study baseline{saline}. Crossover carry-over is not modelled "
                "(`docs/literature.md` §6)."
            )
        )
    return blocks


def predictors_section(inputs: CardInputs) -> list[Block]:
    spec = inputs.task_spec
    report = inputs.external_report()
    external = bool(report.get("available"))
    missing_external = set(report.get("features_entirely_missing") or [])
    header: tuple[str, ...] = ("predictor", "type", "unit or levels", "timing", "description")
    if external:
        header = (*header, f"in {EXTERNAL_COHORT}")
    rows = []
    for column in inputs.feature_spec.columns:
        contract = inputs.contract.column(column.name)
        if column.levels:
            detail = ", ".join(column.levels)
        else:
            detail = column.unit or ("yes/no" if column.kind == "binary" else "")
        cells = [(Code(column.name),), plain(column.kind), plain(detail), plain(str(contract.timing))]
        cells.append(plain(contract.description))
        if external:
            cells.append(plain("missing for every patient" if column.name in missing_external else "recorded"))
        rows.append(tuple(cells))
    cutoff = TIMING_ORDER.index(spec.prediction_time)
    later = [
        c.name
        for c in inputs.contract.columns
        if c.role in PREDICTOR_ROLES and c.timing is not None and TIMING_ORDER.index(c.timing) > cutoff
    ]
    notes = [
        text(
            "Predictors are exactly the schema's predictor columns measured at or before the prediction time "
            "(`pipeline/tasks.py`; a test walks every task). Identifiers, metadata, provenance and outcomes can never "
            "become features."
        )
    ]
    if later:
        notes.append(text(f"Measured after the prediction time, so not used: {codes(later)}."))
    if spec.exclude_predictors:
        notes.append(
            text(
                f"Deliberately excluded for this task (`tasks.{inputs.task}.exclude_predictors`): "
                f"{codes(spec.exclude_predictors)}."
            )
        )
    notes.append(
        text(
            "Categories are one-hot encoded over the schema's fixed levels and flags as 0/1; the resulting feature "
            f"columns are counted in {ref('sample_size')}. Predictors are generated before the outcome, so their "
            "assessment cannot be influenced by it."
        )
    )
    return [heading("predictors"), Table(header, tuple(rows)), Bullets(tuple(notes))]


def sample_size_section(inputs: CardInputs) -> list[Block]:
    check = sample_size_check(inputs)
    table = KeyedTable("quantity")
    table.computed(
        "candidate parameters P (feature columns the model receives)",
        check.parameters,
        0,
        f"number of feature columns in {inputs.feature_spec_path}",
    )
    table.number("training patients n", inputs.cv, "n_train", 0)
    table.number(f"training {vocab(inputs).events}", inputs.cv, "events_train", 0)
    table.computed("training prevalence φ", check.prevalence, 3, "events_train / n_train")
    if check.c_from_params:
        table.number("anticipated C statistic (stated)", inputs.params_file, "report.anticipated_c", 3)
    else:
        key = f"candidates.{inputs.champion}.cv_auroc"
        table.number("anticipated C statistic (the champion's CV AUROC)", inputs.cv, key, 3)
    riley = check.riley
    how = "pipeline.sample_size.riley_sample_size(P, φ, C)"
    if riley is not None:
        table.computed("anticipated Cox-Snell R²", riley.r2_cs, 3, how)
        table.computed("criterion 1: n for an expected shrinkage of at least 0.9", riley.n_shrinkage, 0, how)
        table.computed("criterion 2: n for an optimism in Nagelkerke R² of at most 0.05", riley.n_r2_difference, 0, how)
        table.computed("criterion 3: n for the overall risk within 0.05", riley.n_overall_risk, 0, how)
        table.computed("minimum sample size (the largest of the three)", riley.n, 0, how)
        table.computed(f"{vocab(inputs).events} expected at the minimum size", riley.events, 1, how)
        table.computed("events per candidate parameter at the minimum size", riley.epp, 1, how)
        observed_epp = check.events_train / check.parameters
        table.computed("events per candidate parameter in the training split", observed_epp, 1, "events_train / P")
        if check.n_train >= riley.n:
            verdict = "The training split meets the minimum sample size: it is as large as all three criteria require."
        else:
            verdict = (
                "The training split is smaller than the minimum sample size: expect more optimism and worse "
                "calibration than the criteria aim for, and read the calibration slope with that in mind."
            )
    else:
        verdict = f"The Riley criteria could not be computed: {check.reason}."
    if inputs.champion in ("xgboost", "hist_gb"):
        verdict += (
            " The champion is a tree ensemble: its effective number of parameters (every split of every tree) is far "
            "larger than the P feature columns counted here, so meeting the criteria with P is necessary, not "
            "sufficient; the optimism in the internal validation is the direct measure of over-fitting."
        )
    if check.c_from_params:
        when = "The anticipated C is stated in params (`report.anticipated_c`)."
    else:
        when = (
            "The anticipated C is the champion's cross-validated AUROC, known only after development, so the check "
            "is retrospective: a plausibility check, not a size planned in advance."
        )
    return [
        heading("sample_size"),
        para(
            "Riley et al. (BMJ 2020;368:m441; `docs/literature.md` §7c) give the minimum size for developing a "
            "prediction model of a binary outcome as the largest of three criteria. P counts the feature columns "
            "(one-hot levels separately); logistic regression adds missingness indicators and tree ensembles have many "
            f"more effective parameters, so P is a lower bound on the model's complexity. {when}"
        ),
        table.table(),
        para(verdict),
        *gate_blocks(inputs),
    ]


def gate_blocks(inputs: CardInputs) -> list[Block]:
    """The prospective check the train stage made before any fitting (cv_metrics.json protocol.sample_size)."""
    cv, key = inputs.cv, "protocol.sample_size"
    if get(cv, key) is None:
        return []
    gate = KeyedTable("quantity")
    gate.number("anticipated C statistic, declared before fitting (`train.sample_size.anticipated_c`)", cv,
                f"{key}.anticipated_c", 2)  # fmt: skip
    gate.number("development patients", cv, f"{key}.n", 0)
    gate.number("development responders", cv, f"{key}.events", 0)
    gate.number("candidate parameters", cv, f"{key}.parameters", 0)
    gate.number("events per candidate parameter in the development data", cv, f"{key}.events_per_parameter", 2)
    if get(cv, f"{key}.minimum_n") is not None:
        gate.number("minimum sample size at the declared C", cv, f"{key}.minimum_n", 0)
        gate.number("responders expected at that size", cv, f"{key}.minimum_events", 1)
    if get(cv, f"{key}.passed"):
        verdict = "The development data meet the minimum: the train stage went on to fit."
    elif inputs.underpowered:
        verdict = (
            "**Underpowered.** The development data are below the minimum; the train stage, which otherwise stops "
            "here (exit 6), fitted the model only because `train.sample_size.override` is set."
        )
    else:
        verdict = "The gate's verdict is not recorded."
    return [
        sub("The gate before fitting"),
        para(
            "Before any model is fitted, the train stage applies the same criteria with the C statistic declared in "
            "params and stops below the minimum, so the size is planned, not justified after the fact."
        ),
        gate.table(),
        para(verdict),
    ]


def missing_section(inputs: CardInputs) -> list[Block]:
    columns = [Column(name, f"missing in {name}", 0) for name in source_order(inputs)]
    rows = [(name, "") for name in [*inputs.feature_spec.input_columns, inputs.task_spec.target]]
    champion = inputs.champion
    handling = MISSING_HANDLING.get(champion, "handles missing values as pipeline/train.py documents")
    blocks: list[Block] = [
        heading("missing"),
        para(
            "Missing values stay missing through cleaning; a row with an impossible value is quarantined whole, never "
            "clipped or imputed (the one cap, converted rating-scale totals above the MADRS maximum, is in "
            f"{ref('flow')} with the flow counts). Missing values per column after cleaning, over every kept row of "
            "each source (none: "
            "the cleaning report lists no missing value):"
        ),
        json_grid(inputs.cleaning, "column", rows, "sources.{col}.missing_by_column.{row}", columns),
        para(
            f"**In the model.** The champion ({candidate_name(champion)}) {handling}. **Outcome.** Patients without a "
            "known outcome are left out (complete case). The generator makes follow-up scores go missing more often "
            "for non-responders (missing not at random), as clinic drop-out does, so the analysed patients are not a "
            "random sample of those treated."
        ),
    ]
    description = lookup(inputs.external_report(), "missing_value_handling.description")
    if description:
        blocks.append(Paragraph((Strong(f"In {EXTERNAL_COHORT}."), " ", sentence(str(description)))))
    return blocks


def model_section(inputs: CardInputs) -> list[Block]:
    train, cv = inputs.train, inputs.cv
    candidates = sorted(get(cv, "candidates") or {})
    grid = json_grid(
        cv,
        "candidate",
        [(c, candidate_name(c)) for c in candidates],
        "candidates.{row}.{col}",
        [
            Column("cv_auroc", "CV AUROC", 3),
            Column("cv_auroc[ci]", f"CV AUROC {level_header(CV_INTERVAL_LEVEL)}", 3),
            Column("cv_log_loss", "CV log loss", 4),
            Column("cv_brier", "CV Brier", 4),
            Column("cv_calibration_slope", "CV calibration slope", 2),
            Column("cv_calibration_in_the_large", "CV calibration-in-the-large", 2),
            Column("calibration", "calibration chosen"),
        ],
    )
    hyper = KeyedTable("candidate: hyperparameter")
    for candidate in candidates:
        for name, value in sorted((get(cv, f"candidates.{candidate}.best_params") or {}).items()):
            key, label = f"candidates.{candidate}.best_params.{name}", text(f"`{candidate}`: `{name}`")
            if _finite(value):
                # as many decimals as the value has (grid values are short decimals: 0.03, 1.0, 250)
                exponent = Decimal(str(value)).normalize().as_tuple().exponent
                hyper.number(label, cv, key, min(6, max(0, -int(exponent))))
            else:
                hyper.string(label, cv, key)
    bands = KeyedTable("risk band: upper bound of the predicted probability")
    for i, band in enumerate(get(inputs.model_info, "risk_bands") or []):
        bands.number(text(f"`{band.get('name')}`"), inputs.model_info, f"risk_bands.{i}.upper", 2)
    gate = KeyedTable("gate")
    gate.number("required lower bound of the CV AUROC interval", inputs.params_file, "train.gate.min_cv_auroc_lower", 2)
    gate.number("allowed CV calibration slope, from", inputs.params_file, "train.gate.calibration_slope.0", 2)
    gate.number("allowed CV calibration slope, to", inputs.params_file, "train.gate.calibration_slope.1", 2)
    gate.number("champion: lower bound of its CV AUROC interval", cv, f"candidates.{inputs.champion}.cv_auroc_lower", 3)
    gate.number("champion: CV calibration slope", cv, f"candidates.{inputs.champion}.cv_calibration_slope", 2)
    search = "; ".join(
        f"`{name}`: {candidate.search_iterations} settings drawn from "
        + ", ".join(f"`{k}` {v}" for k, v in candidate.grid.items())
        for name, candidate in train.candidates.items()
    )
    return [
        heading("model"),
        para(
            f"{split_text(inputs)} **Tuning.** Each candidate is "
            f"tuned by {folds_text(inputs)} cross-validation on the training split only (random search scored by log "
            f"loss); then its calibration ({', '.join(train.calibration_methods)}) is chosen by the cross-validated "
            "log loss of calibrated out-of-fold predictions, with the same calibrator implementation and the same "
            "shuffled folds as the shipped model (`pipeline/calibration.py`). **Selection**, declared in params "
            "(`train.selection`) before any test data are seen, so the test split never chooses: "
            f"{lit(selection_text(train))}. "
            "**Class imbalance.** No resampling or class weights: the outcome is common (the prevalence is in the "
            "tables) and probabilities are kept calibrated."
        ),
        para(f"**Search space** (`train.candidates` in params.yaml): {search}."),
        sub("Cross-validated performance of every candidate (training split)"),
        grid,
        sub("Selection: the declared rule and the margins"),
        para(
            "Per candidate: its mean per-patient loss over the calibrated out-of-fold predictions, its margin over the "
            "lowest, the standard error of that margin (paired: the same patients), the margin in standard errors, "
            "whether the rule allows it, and its place in the order of simplicity. A margin within the band is a "
            "near-tie, and near-ties go to the simpler candidate."
        ),
        selection_grid(inputs),
        sub("Chosen hyperparameters"),
        hyper.table(),
        sub("Registry gate"),
        para(
            f"The registry alias `{CHAMPION_ALIAS}` moves to a new version only if the champion passes this gate on "
            "its cross-validated metrics; otherwise the version is tagged as refused with the reasons. "
            + lit(gate_verdict(inputs))
        ),
        gate.table(),
        sub("Model output"),
        para(
            f"The model outputs the {vocab(inputs).wording} (`p_response` in `trd score`, whose `outcome` column "
            f"says so) and a risk band ({lit(risk_band_label(vocab(inputs), 'high'))}, ...). The bands are display "
            "conventions stored with the model, not validated decision thresholds."
        ),
        bands.table(),
        para(
            f"**Full specification.** The fitted estimator is `models/{inputs.task}/artifacts/estimator.skops` (skops, "
            f"no pickle; its SHA-256 is in {ref('identity')}), with its feature specification beside it. What the "
            f"model uses, predictor by predictor, is in {ref('shap')}."
        ),
    ]


def selection_text(train: TrainParams) -> str:
    from pipeline.modelling.selection import selection_rule_text  # noqa: PLC0415 (imports scikit-learn)

    return selection_rule_text(train.selection)


def selection_grid(inputs: CardInputs) -> Table:
    rows = get(inputs.cv, "selection.candidates") or {}
    order = sorted(rows, key=lambda name: rows[name].get("simplicity_rank", 0))
    return json_grid(
        inputs.cv,
        "candidate",
        [(name, candidate_name(name)) for name in order],
        "selection.candidates.{row}.{col}",
        [
            Column("simplicity_rank", "simplicity rank", 0),
            Column("mean_loss", "mean CV loss", 4),
            Column("margin", "margin over the lowest", 4),
            Column("margin_se", "paired SE", 4),
            Column("margin_in_se", "margin in SE", 2),
            Column("eligible", "within the rule"),
        ],
    )


def gate_verdict(inputs: CardInputs) -> str:
    from pipeline.tracking import gate_decision  # noqa: PLC0415 (the registry's own rule)

    champion = get(inputs.cv, f"candidates.{inputs.champion}") or {}
    try:
        reasons = gate_decision(
            champion, inputs.train.gate.min_cv_auroc_lower, tuple(inputs.train.gate.calibration_slope)
        )
    except (KeyError, TypeError):
        return "The gate could not be re-checked from the CV metrics."
    recheck = "passes" if not reasons else "fails (" + "; ".join(reasons) + ")"
    registry = f"; the registry recorded '{inputs.registry.gate}'" if inputs.registry.gate else ""
    return f"Re-checked from the CV metrics, the champion {recheck}{registry}."


def split_text(inputs: CardInputs) -> str:
    cohort = f"the `{inputs.development_name}` cohort" + ("s (pooled)" if len(inputs.development) > 1 else "")
    if not inputs.held_out:
        return (
            f"**Data split.** None: {cohort} has fewer patients than `split.small_cohort_n`, so every patient develops "
            "the model and the internal validation (bootstrap optimism correction on all of them) replaces a "
            "held-out split; the penalised logistic candidate is preferred unless another beats it by the declared "
            "rule."
        )
    if inputs.split.holdout_sites:
        return (
            f"**Data split.** Internal-external validation of {cohort}: the whole sites "
            f"{codes(inputs.split.holdout_sites)} form the test split (`split.holdout_sites`)."
        )
    return (
        f"**Data split.** Patient-level train/test split of {cohort}, stratified on the outcome and seeded "
        "(`split.test_size`, `base.seed`)."
    )


def folds_text(inputs: CardInputs) -> str:
    used, declared = get(inputs.cv, "protocol.cv_folds"), inputs.train.cv_folds
    if used is None or used == declared:
        return f"{declared}-fold"
    return (
        f"{used}-fold (not the declared {declared}: each fold keeps at least `train.min_fold_events` responders "
        "and non-responders)"
    )


def performance_section(inputs: CardInputs) -> list[Block]:
    if not inputs.held_out:
        return [
            heading("performance"),
            *internal_validation_blocks(inputs),
            sub("Held-out test split"),
            para(
                "None (small-cohort protocol): every development patient trained the model, so there is no test "
                f"split, no comparison with a reference and no test-split figure. External validation is in "
                f"{ref('external')}."
            ),
        ]
    m, level = inputs.metrics, inputs.level
    champion = KeyedTable("measure (test split)", level)
    champion.number("AUROC", m, "test.auroc", 3, interval=True)
    champion.number("AUPRC (average precision)", m, "test.auprc", 3, interval=True)
    champion.number(f"prevalence (observed {vocab(inputs).rate})", m, "test.prevalence", 3)
    champion.number("mean predicted probability", m, "test.mean_predicted", 3)
    champion.number("observed − expected (risk scale)", m, "test.observed_minus_expected", 3)
    champion.number(
        "calibration-in-the-large (log-odds, slope fixed at 1)", m, "test.calibration_in_the_large", 2, interval=True
    )
    champion.number("calibration slope", m, "test.calibration_slope", 2, interval=True)
    champion.number("expected calibration error", m, "test.ece", 3)
    champion.number("Brier score", m, "test.brier", 3, interval=True)
    champion.number("scaled Brier score", m, "test.scaled_brier", 3, interval=True)
    intervals = get(inputs.evaluation, "intervals") or {}
    blocks: list[Block] = [heading("performance"), *internal_validation_blocks(inputs)]
    blocks += [
        sub("Held-out test split"),
        Paragraph(
            (
                f"On the held-out {inputs.development_name} test split. Intervals: ",
                str(intervals.get("discrimination", "")),
                " for AUROC and AUPRC; ",
                str(intervals.get("brier", "")),
                " for the Brier scores; ",
                str(intervals.get("calibration_in_the_large_and_slope", "")),
                " for calibration-in-the-large and slope (repetitions and seed in ",
                Code(f"{inputs.evaluation.path}#intervals"),
                ").",
            )
        ),
        champion.table(),
    ]
    if get(m, "oracle") is not None or get(m, "oracle_predictors") is not None:
        oracle = KeyedTable("measure (same test patients, same labels)", level)
        for prefix, name in (("oracle", "generating probability"), ("oracle_predictors", "predictors-only")):
            if get(m, prefix) is None:
                continue
            oracle.number(f"{name}: AUROC", m, f"{prefix}.auroc", 3, interval=True)
            oracle.number(f"{name}: AUPRC", m, f"{prefix}.auprc", 3, interval=True)
            oracle.number(f"{name}: Brier score", m, f"{prefix}.brier", 3, interval=True)
            oracle.number(f"{name}: calibration slope", m, f"{prefix}.calibration_slope", 2, interval=True)
        for prefix, name in (("gap", "generating probability"), ("gap_predictors", "predictors-only")):
            if get(m, prefix) is None:
                continue
            oracle.number(f"AUROC difference, champion − {name} (paired)", m, f"{prefix}.auroc", 3, interval=True)
            share = f"{prefix}.auroc_share_positive"
            oracle.number(f"share of resamples with the champion above the {name}", m, share, 3)
            oracle.number(f"Brier difference, champion − {name} (paired)", m, f"{prefix}.brier", 4, interval=True)
        if get(m, "labels") is not None:
            oracle.number("test patients whose analysed label was compared with the generator's", m, "labels.n", 0)
            oracle.number("share whose analysed label equals the generator's outcome", m, "labels.agree", 3)
        leakage = get(inputs.evaluation, "oracle.leakage_check") or {}
        passed = " Passed." if leakage.get("passed") else " Not passed or not run."
        blocks += [
            sub("Against the two references from the generator"),
            Paragraph(
                (
                    "The **generating probability** (",
                    Code(str(get(inputs.evaluation, "oracle.column"))),
                    ") is the generator's true probability of the outcome given the task's predictors and the site: "
                    "the ceiling of the data-generating process. No task sees the site, so no model of these "
                    "predictors can reach it. The **predictors-only probability** (",
                    Code(str(get(inputs.evaluation, "oracle_predictors.column"))),
                    ") marginalises the site over its probability given the predictors (age, route, psychotherapy and, "
                    "after the first dose, the 24-h MADRS): the best any model of these predictors can reach. Both are "
                    "scored like the model, on the same test patients and the same labels. Those labels are the "
                    "cleaned, complete-case ones: cleaning (scale conversions, rounding) changes a few of them (the "
                    "agreement is in the table) and patients without an outcome, more often non-responders, are not "
                    "scored, so neither reference is exactly the optimum for the scored labels. Leakage check "
                    "(against the generating probability): ",
                    str(leakage.get("rule", "not recorded")),
                    ".",
                    passed,
                )
            ),
            oracle.table(),
        ]
    columns = [
        Column("auroc", "AUROC", 3),
        Column("auroc[ci]", f"AUROC {level_header(level)}", 3),
        Column("auprc", "AUPRC", 3),
        Column("brier", "Brier", 3),
        Column("calibration_slope", "calibration slope", 2),
    ]
    if get(m, "oracle") is not None:
        columns += [
            Column("oracle_gap_auroc", "AUROC − generating", 3),
            Column("oracle_gap_auroc[ci]", "its interval", 3),
        ]
    if get(m, "oracle_predictors") is not None:
        columns += [
            Column("predictors_gap_auroc", "AUROC − predictors-only", 3),
            Column("predictors_gap_auroc[ci]", "its interval", 3),
        ]
    candidates = sorted(get(m, "test.candidates") or {})
    rows = [(c, candidate_name(c)) for c in candidates]
    blocks += [
        sub("Every candidate on the test split (for comparison only: the champion was chosen by cross-validation)"),
        json_grid(m, "candidate", rows, "test.candidates.{row}.{col}", columns),
        Paragraph(
            (
                Strong("Reading."),
                " "
                + "; ".join(
                    (sentence(discrimination_reading(inputs)), oracle_reading(inputs), calibration_reading(inputs))
                )
                + ". "
                + selection_reading(inputs),
            )
        ),
        *figure(
            inputs.figures,
            "roc.png",
            "ROC curves",
            "ROC curves on the test split: the champion, the other candidates and the oracle, with AUROC intervals.",
        ),
        *figure(
            inputs.figures,
            "calibration.png",
            "Calibration curve",
            "Calibration on the test split: observed against predicted in equal-count bins with Wilson intervals, and "
            "the distribution of predicted probabilities below.",
        ),
        *figure(
            inputs.figures,
            "precision_recall.png",
            "Precision-recall curves",
            "Precision-recall on the test split against the oracle and the prevalence (no skill).",
        ),
    ]
    return blocks


def internal_validation_blocks(inputs: CardInputs) -> list[Block]:
    """The optimism-corrected performance, first: it uses every development patient."""
    m = inputs.metrics
    if get(m, "internal_validation") is None:
        return [
            sub("Internal validation (all development data)"),
            para("Not recorded: the train stage wrote no internal validation for this model."),
        ]
    level = get(inputs.cv, "internal_validation.confidence_level")
    rows = [(key, label) for key, label, _ in VALIDATED_ROWS if get(m, f"internal_validation.{key}") is not None]
    grid = json_grid(
        m,
        "measure",
        rows,
        "internal_validation.{row}.{col}",
        [
            Column("apparent", "apparent (shipped model, its training data)", 3),
            Column("optimism", "optimism (mean over bootstrap refits)", 3),
            Column("corrected", "optimism-corrected", 3),
            Column("corrected[ci]", f"its {level_header(float(level)) if _finite(level) else 'interval'}", 3),
        ],
    )
    counts = KeyedTable("bootstrap")
    counts.number("repetitions drawn", m, "internal_validation.repetitions", 0)
    counts.number("repetitions used (both classes; the fit converged)", m, "internal_validation.repetitions_used", 0)
    counts.number("training patients", m, "internal_validation.n", 0)
    return [
        sub("Internal validation (all development data)"),
        Paragraph(
            (
                "Harrell's bootstrap optimism correction (Steyerberg, Clinical Prediction Models, ch. 17): each "
                "repetition draws as many patients as the training split with replacement, refits the champion's "
                "whole procedure on them (its fixed hyperparameters, its calibrator refitted out of fold with a "
                "patient's copies kept in one fold) and measures the refit on that sample and on the original "
                "patients; the mean difference is the optimism, subtracted from the shipped model's apparent "
                "performance. Interval: ",
                str(lookup(inputs.evaluation.data, "intervals.internal_validation") or "not recorded"),
                " (source ",
                Code(f"{inputs.cv.path}#internal_validation"),
                "). The hyperparameter search, the calibration choice and the champion selection are not repeated "
                "inside the bootstrap, so the correction is if anything too small; for tree ensembles, which can "
                "memorise a bootstrap sample's duplicated patients, it is known to be too small, and the "
                "cross-validated AUROC in ",
                *text(ref("model")),
                " is a check on it. ",
                Strong("Reading:"),
                " ",
                sentence(internal_reading(inputs)),
                ".",
            )
        ),
        grid,
        counts.table(),
    ]


# what a flag above the threshold would trigger, by outcome kind
DECISIONS = {"benefit": "offering treatment", "harm": "closer monitoring (or a pre-dose review)"}


def decision_section(inputs: CardInputs) -> list[Block]:
    if not inputs.held_out:
        return [
            heading("decision"),
            para(
                "Not computed: there is no test split (small-cohort protocol), and thresholds read on the patients "
                "that trained the model would flatter it."
            ),
        ]
    thresholds = csv_table(
        inputs.thresholds,
        [
            Column("threshold", "threshold", 2),
            Column("flagged", "share flagged", 3),
            Column("tp", "TP", 0),
            Column("fp", "FP", 0),
            Column("tn", "TN", 0),
            Column("fn", "FN", 0),
            Column("sensitivity", "sensitivity", 3),
            Column("specificity", "specificity", 3),
            Column("ppv", "PPV", 3),
            Column("npv", "NPV", 3),
            Column("nne", f"flagged per one of the {vocab(inputs).events} (1/PPV)", 2),
            Column("net_benefit", "net benefit", 3),
        ],
    )
    curve = KeyedTable("decision curve")
    curve.computed(
        "thresholds where the model's net benefit exceeds both treat-all and treat-none",
        fmt_ranges(net_benefit_ranges(inputs.decision_curve.data)),
        2,
        f"net_benefit_model > max(net_benefit_treat_all, net_benefit_treat_none) in {inputs.decision_curve.path}",
    )
    return [
        heading("decision"),
        para(
            f"If {DECISIONS[vocab(inputs).kind]} depended on the predicted probability exceeding a threshold, this is "
            f"what would happen on the {inputs.development_name} test split. Net benefit counts true "
            f"{vocab(inputs).events} flagged per patient, minus false positives weighted by the odds of the threshold. "
            "The thresholds were declared in params before the test data were seen; **none is validated for clinical "
            "use**."
        ),
        thresholds,
        curve.table(),
        para(
            "The decision curve has no confidence band: where the model's net benefit is close to treat-all or "
            "treat-none the difference is within noise, so the range above is a reading of point estimates only."
        ),
        *figure(
            inputs.figures,
            "decision_curve.png",
            "Decision curve",
            "Decision curve on the test split: net benefit of the champion, the oracle, treat-all and treat-none.",
        ),
    ]


def subgroups_section(inputs: CardInputs) -> list[Block]:
    if not inputs.held_out:
        return [
            heading("subgroups"),
            para("Not computed: there is no test split (small-cohort protocol) to measure subgroups on."),
        ]
    table = KeyedTable("suppression")
    table.number(
        f"cells with fewer patients, {vocab(inputs).events} or {vocab(inputs).non_events} than this are suppressed",
        inputs.evaluation,
        "subgroups.min_cell",
        0,
    )
    table.number("suppressed rows", inputs.evaluation, "subgroups.suppressed_rows", 0)
    grid = csv_table(
        inputs.subgroups,
        [
            Column("group", "group"),
            Column("level", "level"),
            Column("n", "patients", 0),
            Column("events", vocab(inputs).events, 0),
            Column("event_rate", vocab(inputs).rate, 3),
            Column("mean_predicted", "mean predicted", 3),
            Column("auroc", "AUROC", 3),
            Column("o_minus_e", "observed − expected", 3),
            Column("o_e_ratio", "O/E", 2),
            Column("suppression_reason", "suppressed"),
        ],
    )
    return [
        heading("subgroups"),
        para(
            "Performance of the champion on the test split by sex, age band (65+: the esketamine label's older "
            "adults), route, site, psychotherapy and postpartum onset (a fairness table; patients with an unknown "
            f"group form their own level). A suppressed cell shows {NA}: with so few patients, "
            f"{vocab(inputs).events} or {vocab(inputs).non_events} its numbers would be unstable and could "
            "identify individuals; when exactly one level of a group is suppressed, the next smallest is too, so it "
            "cannot be recovered by subtraction. Subgroup AUROCs have no intervals: differences between small levels "
            "are expected by chance."
            + (
                f" The generator plants no effect of sex; route and site change the {vocab(inputs).rate} by design."
                if inputs.synthetic_development
                else ""
            )
        ),
        para(subgroup_discussion(inputs)),
        table.table(),
        grid,
    ]


# What the planted truth says about the two subgroups issue 18 asks every card to discuss, per task target.
OLDER_ADULTS = {
    "bp_event_first": "age raises the first-session SBP rise (+0.25 mmHg per year, lit §12) and hypertension, "
    "which is more common with age, adds to it: expect a higher event rate at 65+",
    "anxiety_response_end": "anxiety change follows depression change, so the planted esketamine penalty from 65 "
    "(lit §4b/§8b) reaches anxiety response too",
}


def subgroup_discussion(inputs: CardInputs) -> str:
    """The postpartum-onset and 65+ rows, read against what the generator planted."""
    older = OLDER_ADULTS.get(
        inputs.task_spec.target,
        "esketamine from age 65 carries a planted penalty (TRANSFORM-3, lit §4b/§8b), so the 65+ band's rate "
        "depends on its route mix",
    )
    return (
        f"**Postpartum onset and age 65+.** Postpartum onset (women only, about 10 % of them; a generator estimate, "
        "no TRD prevalence was found, literature notes §14/§16) has no planted effect on any outcome: the ketamine "
        "trials in the peripartum are prevention trials, not treatment of established TRD, so the generator plants "
        "a documented null. Its row checks that the model does not invent a difference; it is small, and its cells "
        f"are often suppressed. Age 65+: {older}. Neither subgroup is validated on real patients: the external cohort "
        "records neither postpartum onset nor enough older adults."
    )


def external_section(inputs: CardInputs) -> list[Block]:
    report = inputs.external_report()
    blocks: list[Block] = [heading("external")]
    if not report.get("available"):
        reason = str(report.get("reason", "the evaluate stage did not run it"))
        blocks.append(
            Paragraph(
                (
                    f"Not available for this task: {reason}. {EXTERNAL_COHORT} has one infusion and a day-2 rating, so "
                    "only the acute task can be checked on it."
                    + (
                        " Other cohorts: below."
                        if get(inputs.metrics, "external_cohorts")
                        else " This model has no external validation of any kind."
                    ),
                )
            )
        )
        return blocks + other_cohort_blocks(inputs)
    m, level = inputs.metrics, inputs.level
    table = KeyedTable(f"measure ({EXTERNAL_COHORT}, ketamine, day 2)", level)
    table.number("patients", m, "external.n", 0)
    table.number("responders", m, "external.events", 0)
    table.number("observed response rate", m, "external.observed_rate", 3, interval=True)
    table.number("mean predicted probability", m, "external.mean_predicted", 3)
    table.number("AUROC (interval: DeLong, logit scale)", m, "external.auroc", 3, interval=True)
    if get(m, "external.auroc_bootstrap_lower") is not None:
        table.number(
            "AUROC (interval: stratified percentile bootstrap)", m, "external.auroc", 3,
            bounds=("external.auroc_bootstrap_lower", "external.auroc_bootstrap_upper"),
        )  # fmt: skip
        table.number("AUROC after leaving out one patient: lowest", m, "external.auroc_loo_min", 3)
        table.number("AUROC after leaving out one patient: highest", m, "external.auroc_loo_max", 3)
    table.number(
        "Spearman ρ, predicted probability vs percent MADRS change",
        m,
        "external.spearman_rho",
        2,
        bounds=("external.spearman_lower", "external.spearman_upper"),
    )
    table.number("calibration-in-the-large (log-odds)", m, "external.calibration_in_the_large", 2, interval=True)
    table.number("calibration slope", m, "external.calibration_slope", 2, interval=True)
    table.number("input columns missing for every patient", m, "external.features_entirely_missing", 0)
    table.number("input columns of the model", m, "external.features_total", 0)
    blocks += [
        Paragraph(
            (
                f"The {inputs.task} model applied, unchanged, to the real NIMH trial ({EXTERNAL_COHORT}): one 0.5 "
                "mg/kg IV racemic ketamine infusion and one saline infusion in a crossover, MADRS on day 2. A working "
                "model gives a negative ρ (higher probability, larger drop). With so few responders the AUROC is "
                "unstable: its interval uses DeLong's variance on the logit scale, which behaves with few events, the "
                "bootstrap interval is shown beside it, and the leave-one-out range shows how far a single patient "
                "moves it. ",
                Strong("Reading:"),
                f" {sentence(external_reading(inputs))}.",
            )
        ),
        table.table(),
    ]
    if get(m, "external.negative_control") is not None:
        control = KeyedTable("negative control (saline, day 2)", level)
        control.number("patients", m, "external.negative_control.n", 0)
        control.number("responders", m, "external.negative_control.events", 0)
        control.number("AUROC", m, "external.negative_control.auroc", 2, interval=True)
        control.number(
            "Spearman ρ with percent MADRS change after saline",
            m,
            "external.negative_control.spearman_rho",
            2,
            bounds=("external.negative_control.spearman_lower", "external.negative_control.spearman_upper"),
        )
        note = lookup(report, "negative_control.auroc_interval_note")
        blocks += [
            sub("Negative control"),
            Paragraph(
                (
                    "A ketamine-specific model should not predict response to saline.",
                    f" Interval note from the evaluate stage: {note}." if note else "",
                )
            ),
            control.table(),
        ]
    missing = report.get("features_entirely_missing") or []
    differences = (
        "Real patients of a research unit instead of "
        + ("synthetic clinic patients" if inputs.synthetic_development else f"{inputs.development_name} patients")
        + "; one route and dose, no psychotherapy"
    )
    blocks += [
        Paragraph(
            (
                Strong("Differences from the development data."),
                f" {differences}"
                + (f"; these inputs are missing for every patient: {', '.join(missing)}" if missing else "")
                + ". ",
                sentence(str(lookup(report, "missing_value_handling.description") or "")),
            )
        ),
        Paragraph(
            (
                Strong("As written by the evaluate stage"),
                " (",
                Code(f"{inputs.evaluation.path}#external_validation.limitations"),
                "):",
            )
        ),
        Quote((plain(str(report.get("limitations", ""))),)),
    ]
    return blocks + other_cohort_blocks(inputs)


def other_cohort_blocks(inputs: CardInputs) -> list[Block]:
    """External validation on every other configured cohort with the task's outcome (the model transported)."""
    m, level = inputs.metrics, inputs.level
    names = sorted(get(m, "external_cohorts") or {})
    if not names:
        return []
    table = KeyedTable("cohort: measure", level)
    for name in names:
        key = f"external_cohorts.{name}"
        table.number(f"{name}: patients", m, f"{key}.n", 0)
        table.number(f"{name}: responders", m, f"{key}.events", 0)
        table.number(f"{name}: observed response rate", m, f"{key}.observed_rate", 3, interval=True)
        table.number(f"{name}: mean predicted probability", m, f"{key}.mean_predicted", 3)
        table.number(f"{name}: AUROC (interval: DeLong, logit scale)", m, f"{key}.auroc", 3, interval=True)
        table.number(f"{name}: calibration-in-the-large (log-odds)", m, f"{key}.calibration_in_the_large", 2,
                     interval=True)  # fmt: skip
        table.number(f"{name}: calibration slope", m, f"{key}.calibration_slope", 2, interval=True)
    return [
        sub("Other cohorts"),
        para(
            f"The model applied, unchanged, to every other configured cohort that records `{inputs.task_spec.target}` "
            f"(development: {inputs.development_name}). Each is a different population: calibration is not expected "
            f"to carry over; each cohort's limits in words are in `{inputs.evaluation.path}#external_cohorts`."
        ),
        table.table(),
    ]


FIDELITY_ROWS = (
    ("features compared (planted effect or noise)", "fidelity.n_features", 0),
    ("of which with a planted effect", "fidelity.n_planted", 0),
    ("of which noise (planted 0)", "fidelity.n_noise", 0),
    (
        "patient-level correlation of SHAP with the true contribution: median over planted features",
        "fidelity.patient_correlation_median",
        2,
    ),
    ("the same: the smallest over planted features", "fidelity.patient_correlation_min", 2),
    (
        "Spearman rank agreement of mean |SHAP| with mean |true contribution|, planted features only",
        "fidelity.rank_spearman_true",
        2,
    ),
    ("share of the model's total mean |SHAP| on features with no planted effect", "fidelity.noise_share", 3),
    ("sign checks run", "fidelity.sign_checked", 0),
    ("sign checks agreeing with the planted direction", "fidelity.sign_agree", 0),
    ("share agreeing", "fidelity.sign_agreement", 2),
    ("noise separation (1 = every noise feature below every planted one)", "fidelity.noise_separation", 2),
    ("best model rank of a noise feature", "fidelity.noise_best_rank", 0),
    ("noise features above the weakest planted feature", "fidelity.noise_above_a_planted", 0),
    ("model / planted summed mean |SHAP| (planted features)", "fidelity.importance_scale_ratio", 2),
)
# below this patient-level correlation a feature's explanations are called poor in the card's reading
POOR_CORRELATION = 0.5


def shap_section(inputs: CardInputs) -> list[Block]:
    blocks: list[Block] = [heading("shap")]
    explain = inputs.explain
    if explain is None:
        return [*blocks, para("Not available: the explain stage's outputs were not found.")]
    report = explain.explanation.data
    # the explain stage's own words for its method, scale, calibrator and aggregation
    parts = (
        report.get("method"),
        report.get("scale"),
        lookup(report, "calibration.description"),
        report.get("aggregation"),
    )
    description = " ".join(sentence(str(part).rstrip(".")) + "." for part in parts if part)
    checks = KeyedTable("check")
    split = str(lookup(explain.explanation.data, "rows.split") or "test")
    who = "test patients" if split == "test" else "development patients (no test split)"
    checks.number(f"{who} explained", explain.fidelity, "n_explained", 0)
    checks.number("largest additivity error (log-odds)", explain.fidelity, "additivity.max_abs_error", 6)
    checks.number("additivity tolerance (log-odds)", explain.explanation, "additivity.tolerance", 4)
    blocks += [
        Paragraph((f"SHAP values of the champion for every one of its {who}. {description}",)),
        para(
            "Additivity is checked on every row (base value + SHAP values = the model's log-odds); the stage stops "
            "rather than publish an explanation that does not add up."
        ),
        checks.table(),
        sub("Global importance"),
        csv_table(
            explain.importance,
            [
                Column("rank", "rank", 0),
                Column("feature", "predictor"),
                Column("mean_abs_shap", "mean |SHAP|", 4),
                Column("share_of_total", "share of total", 3),
                Column("mean_shap", "mean SHAP", 4),
                Column("fidelity_role", "planted role"),
                Column("planted_mean_abs_shap", "planted mean |SHAP| (whole cohort)", 4),
                Column("planted_rank", "planted rank", 0),
                Column("true_mean_abs_contribution", "true mean |contribution| (these patients)", 4),
            ],
        ),
        *figure(
            explain.figures, "importance_bar.png", "Global importance", "Mean |SHAP| per predictor on the test split."
        ),
        *figure(
            explain.figures,
            "beeswarm.png",
            "SHAP beeswarm",
            "SHAP value per patient and predictor (a seeded sample of test patients), coloured by its value.",
        ),
        sub("Fidelity to the planted truth"),
    ]
    if get(explain.fidelity, "fidelity") is None:
        reason = lookup(report, "fidelity.reason") or "no planted truth for this outcome"
        return [*blocks, Paragraph((f"Not checked: {reason}.",))]
    fidelity = KeyedTable("check")
    for label, key, digits in FIDELITY_ROWS:
        if get(explain.fidelity, key) is not None:
            fidelity.number(label, explain.fidelity, key, digits)
    blocks += [
        Paragraph(
            (
                "Do the explanations recover the effects planted in the generator? The reference is ",
                str(lookup(report, "fidelity.reference") or "not recorded"),
                ": ",
                str(lookup(report, "fidelity.reference_note") or "").rstrip("."),
                ". The generator knows each test patient's true contribution of each feature to the log-odds (its "
                "exact SHAP value, `data/raw/synthetic/true_contributions.parquet`), so the model's SHAP values are "
                "compared with it patient by patient, on the same scale. Agreement describes the model; it is not "
                "evidence that these predictors cause response in real patients.",
            )
        ),
        fidelity.table(),
        *patient_level_blocks(explain),
        *noise_reading(explain),
    ]
    if explain.signs is not None and len(explain.signs.data):
        blocks += [
            para("**Sign checks**: does each planted predictor push the log-odds the planted way?"),
            csv_table(
                explain.signs,
                [
                    Column("feature", "predictor"),
                    Column("level", "level"),
                    Column("planted_terms", "planted terms"),
                    Column("expected_sign", "expected sign", 0),
                    Column("observed", "observed dependence", 3),
                    Column("n_rows", "rows", 0),
                    Column("agrees", "agrees"),
                    Column("skipped", "not checked because"),
                ],
            ),
        ]
    blocks += figure(
        explain.figures, "fidelity.png", "Fidelity", "The model's mean |SHAP| against the planted one, per predictor."
    )
    return blocks


def patient_level_blocks(explain: ExplainInputs) -> list[Block]:
    """Per planted feature, how closely the SHAP values follow the true contributions, and where they do not."""
    correlations = get(explain.fidelity, "fidelity.patient_correlation") or {}
    if not correlations:
        return []
    grid = json_grid(
        explain.fidelity,
        "planted feature",
        [(name, "") for name in correlations],
        "fidelity.{col}.{row}",
        [Column("patient_correlation", "correlation of SHAP with the true contribution, across test patients", 2)],
    )
    poor = [name for name, r in correlations.items() if not _finite(r) or float(r) < POOR_CORRELATION]
    if not poor:
        reading = "Every planted feature's SHAP values follow its true contributions closely."
    else:
        reading = (
            f"Poor agreement (correlation below {POOR_CORRELATION:g} or undefined) for {codes(poor)}. Why, in general: "
            "a weak effect is hard to tell from noise with this many patients, so the model shrinks it or spreads it "
            "over correlated predictors (the dose stands in for the route, psychotherapy mixes for sites); trees split "
            "a continuous effect into steps and share it with correlated features; regularisation attenuates small "
            "effects; a step in the truth (benzodiazepines above 8 mg, CRP from 3 mg/L, the esketamine penalty from "
            "age 65) becomes a slope in a linear model; and where the model also sees on-treatment markers "
            "(first-dose task), those carry part of the baseline features' effect, so the baseline truth is only an "
            "approximate reference there."
        )
    return [
        para(
            "**Patient by patient.** For each planted feature, Pearson's correlation across test patients between its "
            "SHAP value and its true contribution (1: the model spreads patients along that feature exactly as the "
            "truth does, up to scale; 0: unrelated, or the model ignores the feature)."
        ),
        grid,
        para(reading),
    ]


def noise_reading(explain: ExplainInputs) -> list[Block]:
    """Names (no numbers) of noise features the model relies on more than on some planted effect."""
    frame: pd.DataFrame = explain.importance.data
    if not {"fidelity_role", "mean_abs_shap", "feature"} <= set(frame.columns):
        return []
    planted = frame.loc[frame["fidelity_role"] == "planted effect", "mean_abs_shap"]
    noise = frame[frame["fidelity_role"].astype(str).str.startswith("noise")]
    above = noise.loc[noise["mean_abs_shap"] > planted.min(), "feature"].tolist() if len(planted) else []
    if not above:
        return [para("Every noise feature ranks below every planted one.")]
    return [
        para(
            f"Noise features (planted 0) that the model uses more than at least one planted predictor: {codes(above)}. "
            "A model may credit a planted effect to a correlated predictor (for example, the route sets the dose's "
            "unit, and psychotherapy mixes differ by site, whose effect is planted but is not a predictor) or fit "
            "noise: SHAP shows what the model uses, not what causes response."
        )
    ]


def limitations_section(inputs: CardInputs) -> list[Block]:
    items: list[Text] = [
        text(
            "**Synthetic development data.** Every development and test patient is synthetic. The effects were planted "
            "from published estimates, many from small studies, shrunk or estimated (tagged E in the literature "
            "notes); real relationships may differ in size, form and direction."
        )
        if inputs.synthetic_development
        else text(
            f"**Development data.** {inputs.development_name}: one population, with its own case-mix, recording "
            "practice and missing data; the model describes it and nothing guarantees that it transports."
        ),
        (
            Strong("Ceiling."),
            f" {sentence(oracle_reading(inputs))}. Response is largely unpredictable from these predictors by "
            "design, as in the literature; the generating probability is higher still because it knows the site.",
        )
        if inputs.synthetic_development
        else text("**Ceiling.** Unknown: without a synthetic truth no model can be compared with the best possible."),
        text(
            "**Internal validation.** The bootstrap repeats the champion's fitting but not the hyperparameter search, "
            "the calibration choice or the selection among candidates, so its optimism is if anything too small, "
            "most for tree ensembles; "
            + (
                "the held-out split is honest but one noisy draw."
                if inputs.held_out
                else "with no held-out split it is the only internal estimate."
            )
        ),
        (
            Strong("Calibration."),
            f" {sentence(calibration_reading(inputs)) if inputs.held_out else 'No test split to measure it on'}. "
            f"Calibration on {inputs.development_name} data says nothing about calibration in a clinic whose "
            "response rate and case-mix differ.",
        ),
    ]
    check = sample_size_check(inputs)
    if inputs.underpowered:
        items.append(
            text(
                "**Sample size.** Underpowered: below the Riley minimum for the declared C statistic, trained only "
                f"because `train.sample_size.override` is set ({ref('sample_size')})."
            )
        )
    elif check.riley is not None and check.n_train < check.riley.n:
        items.append(text(f"**Sample size.** The training split is below the Riley minimum ({ref('sample_size')})."))
    if inputs.external_report().get("available"):
        items.append(
            (
                Strong("External validation."),
                f" {sentence(external_reading(inputs))}. The real cohort is tiny, from one research unit, with most "
                "inputs missing: a sanity check, not a validation study.",
            )
        )
    elif get(inputs.metrics, "external_cohorts"):
        items.append(
            text(
                f"**External validation.** On {', '.join(sorted(get(inputs.metrics, 'external_cohorts')))} only "
                f"({ref('external')}).",
            )
        )
    else:
        items.append(text(f"**External validation.** None for this task ({ref('external')})."))
    if inputs.registry.gate == "refused":
        items.append(
            (Strong("Registry gate."), f" This version was refused by the gate: {inputs.registry.gate_reasons}.")
        )
    items += [
        text(
            "**Subgroups.** Subgroup AUROCs carry no intervals and small cells are suppressed; no fairness claim "
            "beyond the table is supported"
            + (", and the synthetic sites are not real services." if inputs.synthetic_development else ".")
        ),
        text(
            "**Explanations.** SHAP values describe how the model uses correlated predictors, not causes; for a "
            "calibrated champion they explain the model before its calibrator."
        ),
        text(
            "**Not evaluated.** Prospective performance, clinical utility, acceptability, the harms of false "
            "reassurance or of withheld treatment, and drift over time."
        ),
    ]
    return [heading("limitations"), Bullets(tuple(items))]


def open_science_section(inputs: CardInputs) -> list[Block]:
    return [
        heading("open_science"),
        Bullets(
            (
                text(
                    "**Using the model (research).** "
                    f"`trd score patients.csv -o scores.csv --task {inputs.task}` reads canonical rows (or a "
                    "configured export layout), harmonises codes, units and scales exactly as in training, rejects "
                    "invalid rows with a reason code instead of guessing, scores missing predictors as missing, and "
                    "can list each patient's main drivers (`--explain`). Users need the schema's units and the limits "
                    "in this card."
                ),
                text(
                    "**Ethics.** No ethics review is recorded for this research software. Development used only "
                    "synthetic data; the public trial data are distributed de-identified under the licence in "
                    f"{ref('data')}. No patient identifier appears in this card, in MLflow or in the reports."
                )
                if inputs.synthetic_development
                else text(
                    f"**Ethics.** Developed on {inputs.development_name}: its approval and consent are the data "
                    "holder's to record; the pipeline records none. No patient identifier appears in this card, in "
                    "MLflow or in the reports."
                ),
                text(
                    "**Funding, conflicts of interest, protocol, registration.** Not recorded in the pipeline's "
                    "inputs; the model was not developed under a registered protocol."
                ),
                text("**Patient and public involvement.** None is recorded in the pipeline's inputs."),
                text(
                    f"**Code and data availability.** The code is this repository at the commit in {ref('identity')}. "
                    "The synthetic data are regenerated byte for byte by `dvc repro` from `params.yaml`; the public "
                    f"data set is cited with its DOI in {ref('data')}"
                    + (
                        "."
                        if inputs.synthetic_development
                        else f"; {inputs.development_name} is available only as its data holder allows."
                    )
                ),
            )
        ),
        para("**Methods references.**"),
        Bullets(tuple(citation(reference, doi) for reference, doi in METHOD_REFERENCES)),
    ]


# (item, topic, section key or None, note); items and topics as docs/literature.md §7a lists them
CHECKLIST: tuple[tuple[str, str, str | None, str], ...] = (
    (
        "1",
        "Title: development or evaluation, population, outcome, regression or machine learning",
        None,
        "the card's title",
    ),
    ("2", "Abstract (TRIPOD+AI for Abstracts)", "summary", "partly: a structured summary, not a journal abstract"),
    ("3a", "Healthcare context, rationale, existing models", "intended_use", ""),
    ("3b", "Target population, place in the care pathway, intended users", "intended_use", ""),
    ("3c", "Known health inequalities across groups", "subgroups", "partly: synthetic groups only"),
    ("4", "Objectives: development, evaluation or both", "intended_use", ""),
    ("5a", "Data sources and their representativeness", "data", ""),
    ("5b", "Dates of accrual and end of follow-up", "data", "partly: synthetic data have no accrual period"),
    ("6a", "Setting and centres", "data", ""),
    ("6b", "Eligibility criteria", "flow", ""),
    ("6c", "Treatments received", "predictors", "the treatment plan is among the predictors"),
    ("7", "Data preparation and quality checks", "missing", "also the flow counts"),
    ("8a–c", "Outcome: definition, timing, blinding of assessment", "outcome", ""),
    ("9a–c", "Predictors: choice, definition, timing, blinding", "predictors", ""),
    ("10", "Sample size justification", "sample_size", "retrospective when the anticipated C is the CV AUROC"),
    ("11", "Missing data handling", "missing", ""),
    ("12a", "Data splits", "model", ""),
    ("12b", "Handling of predictors", "predictors", ""),
    ("12c", "Model type and tuning", "model", ""),
    (
        "12d",
        "Internal validation",
        "performance",
        "bootstrap optimism correction on all development data, and a held-out test split",
    ),
    ("12e", "Clustering and heterogeneity across centres", "subgroups", "partly: per-site rows; no random effects"),
    ("12f", "Performance measures: discrimination and calibration", "performance", ""),
    ("12g", "Model updating", None, "not applicable: the model is not updated after development"),
    ("13", "Class imbalance", "model", "none used, stated"),
    ("14", "Fairness methods", "subgroups", ""),
    ("15", "Model output and thresholds", "decision", "also the risk bands in the model section"),
    ("16", "Differences between development and evaluation data", "external", ""),
    ("17", "Ethics", "open_science", "partly: no ethics review recorded"),
    ("18a–f", "Open science: funding, conflicts, protocol, registration, data and code", "open_science", "partly"),
    ("19", "Patient and public involvement", "open_science", "none recorded"),
    ("20", "Participant flow and characteristics", "flow", "characteristics in the subgroup table"),
    ("21", "Model development details", "model", ""),
    ("22", "Full model specification", "model", "partly: the estimator file; importances in the SHAP section"),
    ("23", "Model performance, including subgroups", "performance", "also the subgroup and external sections"),
    ("24", "Model updating results", None, "not applicable: no updating was done"),
    ("25", "Interpretation", "summary", "readings of the intervals"),
    ("26", "Limitations", "limitations", ""),
    ("27", "Usability: poor or missing inputs, user expertise, future research", "open_science", ""),
)


def checklist_section(inputs: CardInputs) -> list[Block]:
    rows = []
    for item, topic, key, note in CHECKLIST:
        where = text(ref(key)) if key is not None else plain(note)
        rows.append((plain(item), plain(topic), where, plain(note if key is not None else "")))
    return [
        heading("checklist"),
        para(
            "TRIPOD+AI (Collins et al., BMJ 2024;385:e078378). Item numbering follows the BMJ 2024 checklist as "
            "summarised in the project's literature notes (`docs/literature.md` §7a), where items 1 to 6 were read in "
            "a stored rendering of the checklist and items 7 to 27 are marked NV (not verified against the official "
            "checklist): check the official PDF before citing an item number."
        ),
        Table(("TRIPOD+AI item", "topic", "where in this card", "note"), tuple(rows)),
    ]


def provenance_section(inputs: CardInputs) -> list[Block]:
    blocks: list[Block] = [
        heading("provenance"),
        para(
            f"Generated by `trd report {inputs.task}` (DVC stage `report@{inputs.task}`) from the pipeline's outputs "
            "only: do not edit it by hand. Every table holding numbers names its source, per row or in the line "
            "under it; `tests/test_report.py` parses the tables back and compares every number with its source."
        ),
    ]
    if not inputs.lock:
        return [*blocks, para("No `dvc.lock` was found: these outputs were not produced by `dvc repro`.")]
    rows = tuple(((Code(e.stage),), (Code(e.path),), (Code(e.md5),)) for e in inputs.lock)
    return [
        *blocks,
        para(
            "The hashes DVC recorded in `dvc.lock` when this card was built identify the exact source data, "
            "public data, clean cohort, split, model, evaluation and explanations it describes (a directory's hash "
            "covers every file in it)."
        ),
        Table(("stage", "output", "md5 (dvc.lock)"), rows),
    ]


SECTION_BUILDERS: dict[str, Callable[[CardInputs], list[Block]]] = {
    "identity": identity_section,
    "summary": summary_section,
    "intended_use": intended_use_section,
    "out_of_scope": out_of_scope_section,
    "data": data_section,
    "flow": flow_section,
    "outcome": outcome_section,
    "predictors": predictors_section,
    "sample_size": sample_size_section,
    "missing": missing_section,
    "model": model_section,
    "performance": performance_section,
    "decision": decision_section,
    "subgroups": subgroups_section,
    "external": external_section,
    "shap": shap_section,
    "limitations": limitations_section,
    "open_science": open_science_section,
    "checklist": checklist_section,
    "provenance": provenance_section,
}


def build_card(inputs: CardInputs) -> Document:
    """Pure core: the whole card as a document, from the gathered inputs."""
    blocks: list[Block] = [
        Quote(
            (
                text(
                    "**Research use only. Not a medical device.** "
                    + (
                        "Developed and tested on synthetic patients"
                        if inputs.synthetic_development
                        else f"Developed on {inputs.development_name} patients"
                    )
                    + f"; not for any clinical decision. Generated from the pipeline's outputs by "
                    f"`trd report {inputs.task}`."
                ),
            ),
            kind="warning",
        ),
        para("**Contents**"),
        Bullets(tuple(text(ref(key)) for key, _ in SECTIONS)),
    ]
    for key, _ in SECTIONS:
        blocks += SECTION_BUILDERS[key](inputs)
    title = (
        f"Model card: {inputs.registered_name}, a machine-learning model of {card_subject(inputs)} in "
        f"treatment-resistant depression (task {inputs.task}; {inputs.development_name} development data"
        + ("; underpowered)" if inputs.underpowered else ")")
    )
    return Document(title, tuple(blocks))


# --------------------------------------------------------------------------------------------------------------
# rendering: Markdown
# --------------------------------------------------------------------------------------------------------------

# Only what would format is escaped, so the Markdown stays readable as text: backslash, backtick, asterisk, pipe
# (a table cell ends there), "<" opening a tag, "]" closing a link, "_" at a word boundary.
_MD_SPECIAL = re.compile(r"([\\`*|]|<(?=[A-Za-z/!?])|\[(?=[^\]]*\][(\[:]))")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(value: str) -> str:
    """Plain text safe in Markdown and in a table cell: punctuation that would format is backslash-escaped."""
    return _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", value))


def _md_code(value: str) -> str:
    value = value.replace("|", "\\|")  # a pipe ends a table cell even inside a code span (GFM)
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def md_inline(content: Text) -> str:
    out = []
    for part in content:
        if isinstance(part, str):
            out.append(md_escape(part))
        elif isinstance(part, Code):
            out.append(_md_code(part.text))
        elif isinstance(part, Link):
            out.append(f"[{md_escape(part.text)}]({part.href})")
        else:
            out.append(f"**{md_escape(part.text)}**")
    return "".join(out).replace("\n", " ")


def _md_paragraph(content: Text) -> str:
    line = md_inline(content)
    # a paragraph must not start like a heading, a list item or a numbered item
    return "\\" + line if re.match(r"^(#|>|[-+=]\s|\d+[.)]\s)", line) else line


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(md_escape(h) for h in table.header) + " |",
        "|" + "|".join(" --- " for _ in table.header) + "|",
        *("| " + " | ".join(md_inline(cell) for cell in row) + " |" for row in table.rows),
    ]
    if table.source:
        lines += ["", md_inline(table.source)]
    return "\n".join(lines)


def render_markdown(document: Document) -> str:
    parts = [f"# {md_escape(document.title)}"]
    for block in document.blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Paragraph):
            parts.append(_md_paragraph(block.content))
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {md_inline(item)}" for item in block.items))
        elif isinstance(block, Quote):
            parts.append("\n>\n".join(f"> {md_inline(p)}" for p in block.paragraphs))
        elif isinstance(block, Table):
            parts.append(_md_table(block))
        else:
            parts.append(f"![{md_escape(block.alt)}]({block.href})\n\n{md_inline(block.caption)}")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------------------
# rendering: HTML (self-contained; well-formed as XML too)
# --------------------------------------------------------------------------------------------------------------

_NUMERIC_CELL = re.compile(r"^(-?\d+(\.\d+)?|\[-?\d+(\.\d+)?, -?\d+(\.\d+)?\]|" + NA + ")$")

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --soft: #f5f7fa; --warn: #fff4e5; --warn-line: #e8a33d;
  --link: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: #fff; }
main { max-width: 66rem; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.65rem; line-height: 1.25; margin: 0 0 1rem; }
h2 { font-size: 1.3rem; margin: 2.5rem 0 0.75rem; padding-top: 0.75rem; border-top: 2px solid var(--line); }
h3 { font-size: 1.08rem; margin: 1.6rem 0 0.5rem; }
p, li, figcaption { max-width: 54rem; }
a { color: var(--link); }
code { font: 0.86em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
  padding: 0.05em 0.3em; border-radius: 3px; overflow-wrap: anywhere; }
blockquote { margin: 1rem 0; padding: 0.75rem 1rem; border-left: 4px solid var(--line); background: var(--soft); }
blockquote.warning { border-left-color: var(--warn-line); background: var(--warn); }
blockquote p { margin: 0.3rem 0; }
.table-wrap { overflow-x: auto; margin: 0.75rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.88rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.55rem; vertical-align: top; text-align: left; }
th { background: var(--soft); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.source code { font-size: 0.76rem; color: var(--muted); background: none; padding: 0; }
p.source { font-size: 0.8rem; color: var(--muted); margin-top: -0.4rem; }
figure { margin: 1rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 0.88rem; color: var(--muted); margin-top: 0.35rem; }
@media print { figure, tr { break-inside: avoid; } }
"""


def html_inline(content: Text) -> str:
    out = []
    for part in content:
        if isinstance(part, str):
            out.append(html.escape(part))
        elif isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        elif isinstance(part, Link):
            out.append(f'<a href="{html.escape(part.href)}">{html.escape(part.text)}</a>')
        else:
            out.append(f"<strong>{html.escape(part.text)}</strong>")
    return "".join(out)


def _plain_text(content: Text) -> str:
    return "".join(part if isinstance(part, str) else part.text for part in content)


def _html_table(table: Table) -> str:
    source_column = table.header[-1] == "source"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            classes = ["num"] if _NUMERIC_CELL.match(_plain_text(cell).strip()) else []
            if source_column and i == len(row) - 1:
                classes.append("source")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html_inline(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    out = f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
    out += "\n</tbody></table></div>"
    if table.source:
        out += f'\n<p class="source">{html_inline(table.source)}</p>'
    return out


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f'<h{block.level} id="{block.anchor}">{html.escape(block.text)}</h{block.level}>'
    if isinstance(block, Paragraph):
        return f"<p>{html_inline(block.content)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{html_inline(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Quote):
        paragraphs = "".join(f"<p>{html_inline(p)}</p>" for p in block.paragraphs)
        return f'<blockquote class="{block.kind}">{paragraphs}</blockquote>'
    if isinstance(block, Table):
        return _html_table(block)
    data = base64.b64encode(block.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}" />'
        f"<figcaption>{html_inline(block.caption)}</figcaption></figure>"
    )


def render_html(document: Document) -> str:
    """A self-contained page: inline CSS, figures as base64 data URIs, no script, nothing fetched."""
    title = html.escape(document.title)
    body = "\n".join(_html_block(block) for block in document.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8" />\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1" />\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------------------
# gathering the inputs (I/O)
# --------------------------------------------------------------------------------------------------------------


def _missing(path: Path, what: str) -> PipelineError:
    return PipelineError(f"{what} not found", file=path, hint="run the stages before the report (dvc repro)")


def read_json(root: Path, relative: str, what: str) -> Sourced:
    path = root / relative
    if not path.is_file():
        raise _missing(path, what)
    try:
        return Sourced(relative, json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise PipelineError(f"{what} is not valid JSON ({exc})", file=path) from None


def read_csv(root: Path, relative: str, what: str) -> Sourced:
    path = root / relative
    if not path.is_file():
        raise _missing(path, what)
    return Sourced(relative, pd.read_csv(path))  # an empty cell is NaN, shown as NA


def read_figures(root: Path, folder: str, names: Sequence[str], card_folder: str) -> dict[str, tuple[str, bytes]]:
    figures = {}
    for name in names:
        path = root / folder / name
        if path.is_file():
            figures[name] = (f"{Path(folder).relative_to(card_folder).as_posix()}/{name}", path.read_bytes())
    return figures


def read_lock(root: Path, task: str) -> tuple[LockEntry, ...]:
    """The outs DVC recorded for the stages upstream of this task's card (read at run time, never a dependency)."""
    path = root / "dvc.lock"
    if not path.is_file():
        return ()
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    wanted = [
        "synthesize",
        "fetch",
        "clean",
        *(f"{stage}@{task}" for stage in ("split", "train", "evaluate", "explain")),
    ]
    return tuple(
        LockEntry(stage, str(out.get("path")), str(out.get("md5", "")))
        for stage in wanted
        for out in (stages.get(stage) or {}).get("outs", [])
    )


def registry_info(root: Path, registered_name: str, estimator_sha256: str) -> RegistryInfo:
    """The newest registered version whose ``estimator_sha256`` tag matches; a missing store never fails the stage."""
    from pipeline import tracking  # noqa: PLC0415

    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return RegistryInfo(registered_name, reason="no MLflow store was reachable")
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        tracking.use_store(root)
        client = MlflowClient()
        versions = client.search_model_versions(f"name = '{registered_name}'")
        matches = [v for v in versions if v.tags.get("estimator_sha256") == estimator_sha256]
        if not matches:
            return RegistryInfo(registered_name, reason="no registered version carries this estimator's SHA-256")
        version = max(matches, key=lambda v: int(v.version))
        # search results carry no aliases: read them from the registered model
        champion = (client.get_registered_model(registered_name).aliases or {}).get(CHAMPION_ALIAS)
        run_sha = client.get_run(version.run_id).data.tags.get("git_sha") if version.run_id else None
        return RegistryInfo(
            name=registered_name,
            version=str(version.version),
            champion_version=None if champion is None else str(champion),
            run_id=version.run_id or None,
            gate=version.tags.get("gate"),
            gate_reasons=version.tags.get("gate_reasons"),
            training_git_sha=run_sha,
        )
    except (MlflowException, OSError) as exc:
        log.warning("MLflow registry lookup for %s failed: %s", registered_name, exc)
        return RegistryInfo(registered_name, reason="the MLflow registry could not be queried")


def read_explain(root: Path, folder: str, card_folder: str) -> ExplainInputs | None:
    if not (root / folder / "fidelity.json").is_file():
        return None
    signs = f"{folder}/sign_checks.csv"
    return ExplainInputs(
        fidelity=read_json(root, f"{folder}/fidelity.json", "explanation fidelity"),
        explanation=read_json(root, f"{folder}/explanation.json", "explanation report"),
        importance=read_csv(root, f"{folder}/importance.csv", "SHAP importance table"),
        signs=read_csv(root, signs, "SHAP sign checks") if (root / signs).is_file() else None,
        figures=read_figures(root, f"{folder}/figures", EXPLAIN_FIGURES, card_folder),
    )


def gather_inputs(root: Path, task_name: str, raw_params: dict[str, Any]) -> CardInputs:
    """Read every input of the card (files, registry, git, dvc.lock) into one typed structure."""
    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.modelling.params import TrainParams  # noqa: PLC0415
    from pipeline.params import parse_section  # noqa: PLC0415
    from pipeline.split import SplitParams  # noqa: PLC0415
    from pipeline.tasks import TasksParams  # noqa: PLC0415

    sources = {
        path.stem: Sourced(path.relative_to(root).as_posix(), yaml.safe_load(path.read_text(encoding="utf-8")))
        for path in sorted((root / "configs" / "sources").glob("*.yaml"))
    }
    card_folder = f"reports/{task_name}"
    evaluation = f"{card_folder}/evaluation"
    artifacts = f"models/{task_name}/artifacts"
    feature_spec_path = f"{artifacts}/feature_spec.json"
    if not (root / feature_spec_path).is_file():
        raise _missing(root / feature_spec_path, "feature spec")
    planted = "data/raw/synthetic/planted_effects.json"
    model_info = read_json(root, f"{artifacts}/model_info.json", "model info")
    inputs = CardInputs(
        task=task_name,
        task_spec=parse_section(TasksParams, raw_params, "tasks", PARAMS_FILE).get(task_name),
        split=parse_section(SplitParams, raw_params, "split", PARAMS_FILE),
        train=parse_section(TrainParams, raw_params, "train", PARAMS_FILE),
        params=parse_section(ReportParams, raw_params, "report", PARAMS_FILE),
        raw_params=raw_params,
        contract=load_contract(root / "configs" / "cohort_schema.yaml"),
        sources=sources,
        cleaning=read_json(root, "reports/cleaning.json", "cleaning report"),
        planted=read_json(root, planted, "planted effects") if (root / planted).is_file() else None,
        split_counts=read_json(root, f"data/processed/{task_name}/split.json", "split counts"),
        model_info=model_info,
        feature_spec=FeatureSpec.load(root / feature_spec_path),
        feature_spec_path=feature_spec_path,
        cv=read_json(root, f"{card_folder}/cv_metrics.json", "cross-validation metrics"),
        metrics=read_json(root, f"{evaluation}/metrics.json", "evaluation metrics"),
        evaluation=read_json(root, f"{evaluation}/evaluation.json", "evaluation report"),
        thresholds=read_csv(root, f"{evaluation}/thresholds.csv", "threshold table"),
        subgroups=read_csv(root, f"{evaluation}/subgroups.csv", "subgroup table"),
        decision_curve=read_csv(root, f"{evaluation}/plots/decision_curve.csv", "decision curve"),
        figures=read_figures(root, f"{evaluation}/figures", EVALUATION_FIGURES, card_folder),
        explain=read_explain(root, f"{card_folder}/explain", card_folder),
        registry=registry_info(
            root, str(model_info.data["registered_model_name"]), str(model_info.data["estimator_sha256"])
        ),
        lock=read_lock(root, task_name),
    )
    check_consistency(inputs)
    return inputs


def check_consistency(inputs: CardInputs) -> None:
    """The files must describe one model: a card mixing two training runs would be worse than none."""
    sha = inputs.model_info.data.get("estimator_sha256")
    hint = "re-run the pipeline (dvc repro) so every output comes from the same training run"
    if get(inputs.evaluation, "champion.estimator_sha256") != sha:
        raise PipelineError(
            "the evaluation describes another model than models/<task> (estimator hashes differ)", hint=hint
        )
    if inputs.explain is not None and get(inputs.explain.explanation, "champion.estimator_sha256") not in (None, sha):
        raise PipelineError(
            "the explanations describe another model than models/<task> (estimator hashes differ)", hint=hint
        )
    if not _finite(get(inputs.evaluation, "intervals.level")):
        raise PipelineError("evaluation.json records no interval level (intervals.level)", hint=hint)
    if get(inputs.cv, "champion") != inputs.champion:
        raise PipelineError("cv_metrics.json names another champion than the saved model", hint=hint)
    if inputs.task_spec.target != inputs.feature_spec.target:
        raise PipelineError("the saved model predicts another target than the task's", hint=hint)


# --------------------------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------------------------


def write_card(document: Document, folder: Path) -> tuple[Path, Path]:
    """Both renderings, each written atomically."""
    from pipeline.io import atomic_path  # noqa: PLC0415

    files = (folder / MARKDOWN_FILE, folder / HTML_FILE)
    for path, content in zip(files, (render_markdown(document), render_html(document)), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(content, encoding="utf-8", newline="\n")
    return files


def log_to_mlflow(root: Path, registry: RegistryInfo, files: Sequence[Path]) -> bool:
    """Attach the card to the task's training run; skip with a warning when there is no run to attach it to.

    The DVC outputs are the primary record, so MLflow trouble never fails the stage.
    """
    if registry.run_id is None:
        log.warning("%s: model card not logged to MLflow (%s)", registry.name, registry.reason or "no training run")
        return False
    import mlflow  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415

    try:
        tracking.use_store(root)
        with mlflow.start_run(run_id=registry.run_id):
            for path in files:
                mlflow.log_artifact(str(path), artifact_path=MLFLOW_ARTIFACT_PATH)
    except (MlflowException, OSError) as exc:
        log.warning("%s: model card not logged to MLflow run %s: %s", registry.name, registry.run_id, exc)
        return False
    log.info("%s: model card logged to MLflow run %s", registry.name, registry.run_id)
    return True


def main(task_name: str) -> None:
    from pipeline.params import read_params_file  # noqa: PLC0415
    from pipeline.paths import ProjectPaths  # noqa: PLC0415

    paths = ProjectPaths.discover()
    inputs = gather_inputs(paths.root, task_name, read_params_file(paths.params_file))
    files = write_card(build_card(inputs), paths.reports_dir / task_name)
    registry = f"version {inputs.registry.version}" if inputs.registry.found else NOT_IN_REGISTRY
    written = ", ".join(p.relative_to(paths.root).as_posix() for p in files)
    log.info("%s: model card written to %s (registry: %s)", task_name, written, registry)
    log_to_mlflow(paths.root, inputs.registry, files)
