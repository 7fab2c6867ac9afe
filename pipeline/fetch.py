"""The ``fetch`` stage: obtain a public cohort's files, verify every checksum, and put them in place whole.

``trd fetch ds005917`` reads ``configs/sources/ds005917.yaml`` (a ``kind: bids_phenotype`` file, model
:class:`~pipeline.sources.bids_spec.BidsSourceSpec`) and fills ``data/external/ds005917/`` (a DVC output) with the
listed files, from a local mirror folder when ``TRD_DATA_MIRROR`` is set (it holds ``<source>/<path>``, e.g.
``../shared/datasets``), otherwise over HTTPS from each file's urls in order. A file is accepted only if its
SHA-256 (and size) equals the pinned one.

Nothing partial is ever visible: the files are staged in a hidden folder beside the destination, and only when
all of them have been obtained and verified does that folder replace the destination by rename. On any failure
the staging folder is removed and the destination is left exactly as it was.

Besides the data files the destination holds ``SOURCE.json``: what the release is (version, DOI, licence,
citation) and each file's checksum and canonical urls. It records no time, machine path or actual origin
(those go to the log), so a fetch from the mirror and one from the internet give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipeline.errors import ConfigError, PipelineError
from pipeline.io import write_json
from pipeline.paths import ProjectPaths
from pipeline.sources.bids_spec import BidsSourceSpec, RemoteFile, load_bids_spec
from pipeline.sources.spec import load_yaml_spec

logger = logging.getLogger(__name__)

# no params: the source file in configs/ describes the release; the mirror is where to read it, not what
PARAMS_USED: tuple[str, ...] = ()

MIRROR_ENV = "TRD_DATA_MIRROR"
PROVENANCE_FILE = "SOURCE.json"
DEFAULT_TIMEOUT_S = 60.0
USER_AGENT = "trd-ketamine-pipeline-fetch/0.1 (python-urllib)"
FETCHABLE_KINDS: tuple[str, ...] = ("bids_phenotype",)  # source files that describe a public release


# --- the source file: configs/sources/<source>.yaml --------------------------------------------------------


def provenance(spec: BidsSourceSpec) -> dict[str, Any]:
    """The content of SOURCE.json: the release and its files, nothing about this particular run."""
    return {
        "name": spec.name,
        "title": spec.title,
        "version": spec.version,
        "doi": spec.doi,
        "licence": spec.licence,
        "registration": spec.registration,
        "homepage": spec.homepage,
        "citation": spec.citation,
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size, "urls": list(f.urls)} for f in spec.files],
        "note": "Every file was verified against its sha256 when fetched, from a local mirror or one of its urls.",
    }


def fetchable_sources(sources_dir: Path) -> list[str]:
    """Names of the source files in ``sources_dir`` whose kind can be fetched (unreadable files are skipped)."""
    names = []
    for path in sorted(Path(sources_dir).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and raw.get("kind") in FETCHABLE_KINDS:
            names.append(path.stem)
    return names


def _choose_from(sources_dir: Path) -> str:
    return f"choose one of: {', '.join(fetchable_sources(sources_dir)) or '(none)'}; each is a file in {sources_dir}"


def load_source_spec(source: str, sources_dir: Path) -> BidsSourceSpec:
    """Read and check ``<sources_dir>/<source>.yaml``; any problem is a ConfigError naming the file."""
    path = Path(sources_dir) / f"{source}.yaml"
    if "/" in source or "\\" in source or not path.is_file():
        raise ConfigError(f"unknown source '{source}'", file=sources_dir, hint=_choose_from(sources_dir))
    raw = load_yaml_spec(path)
    if raw.get("kind") not in FETCHABLE_KINDS:
        raise ConfigError(
            f"source '{source}' (kind {raw.get('kind')!r}) is not a public dataset to fetch",
            file=path,
            hint=f"{_choose_from(sources_dir)} (synthetic data is made by `trd synthesize`)",
        )
    spec = load_bids_spec(path)
    if PROVENANCE_FILE in (f.path for f in spec.files):
        raise ConfigError(f"'{PROVENANCE_FILE}' is written by the fetch stage and cannot be a data file", file=path)
    return spec


# --- obtaining and verifying files -------------------------------------------------------------------------


class Downloader(Protocol):
    """Fetch ``url`` and return its bytes: at most ``max_bytes`` + 1 of them (more means a wrong file)."""

    def __call__(self, url: str, *, timeout: float, max_bytes: int) -> bytes: ...


def download_https(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """The default downloader: urllib over HTTPS with a timeout, reading a bounded number of bytes."""
    if not url.startswith("https://"):
        raise urllib.error.URLError(f"refusing a non-https url: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310 (https checked above)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.read(max_bytes + 1)


@dataclass(frozen=True)
class Fetched:
    """One verified file: its path in the release and where this run obtained it (for the log only)."""

    path: str
    origin: str


class _Mismatch(Exception):
    """The bytes are not the pinned file."""

    def __init__(self, file: RemoteFile, size: int, digest: str) -> None:
        super().__init__(file.path)
        self.detail = (
            f"checksum mismatch for {file.path}: expected sha256 {file.sha256} ({file.size} bytes), "
            f"got {digest} ({size} bytes)"
        )


def _verify(file: RemoteFile, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != file.size or digest != file.sha256:
        raise _Mismatch(file, len(data), digest)


_MISMATCH_HINT = (
    "the file is not the pinned release: replace it with the published file; change the checksum in "
    "configs/sources/{name}.yaml only when deliberately moving to another release version"
)


def _from_mirror(spec: BidsSourceSpec, file: RemoteFile, mirror: Path) -> tuple[bytes, str]:
    root = mirror / spec.name
    where = root / file.path
    if not root.is_dir():
        raise PipelineError(
            f"the data mirror has no '{spec.name}' folder",
            file=root,
            hint=f"point {MIRROR_ENV} at a folder that contains {spec.name}/{file.path} (and the release's other "
            f"files), or unset it to download from {file.urls[0]}",
        )
    if not where.is_file():
        raise PipelineError(
            f"{file.path} is missing from the data mirror",
            file=where,
            hint=f"copy {file.path} of {spec.name} v{spec.version} there (published at {file.urls[0]}), "
            f"or unset {MIRROR_ENV} to download it",
        )
    hint = _MISMATCH_HINT.format(name=spec.name)
    try:
        actual = where.stat().st_size
        if actual != file.size:  # refused without reading a wrong file of any size
            raise PipelineError(_Mismatch(file, actual, "(not computed)").detail, file=where, hint=hint)
        data = where.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read {file.path} from the mirror ({exc.strerror})", file=where) from None
    try:
        _verify(file, data)
    except _Mismatch as exc:
        raise PipelineError(exc.detail, file=where, hint=hint) from None
    return data, str(where)


def _from_urls(spec: BidsSourceSpec, file: RemoteFile, downloader: Downloader, timeout: float) -> tuple[bytes, str]:
    failures: list[str] = []
    mismatch: _Mismatch | None = None
    for url in file.urls:
        try:
            data = downloader(url, timeout=timeout, max_bytes=file.size)
            _verify(file, data)
        except _Mismatch as exc:
            # another url may still serve the right bytes (a mirror can lag or serve a pointer file)
            mismatch = mismatch or exc
            failures.append(f"{url}: content differs from the pinned file")
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, HTTPError, timeouts: OSError
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        else:
            return data, url
    if mismatch is not None:
        raise PipelineError(
            f"{mismatch.detail}; tried {'; '.join(failures)}",
            file=f"{spec.name}/{file.path}",
            hint=_MISMATCH_HINT.format(name=spec.name),
        )
    raise PipelineError(
        f"could not download v{spec.version} from any published url ({'; '.join(failures)})",
        file=f"{spec.name}/{file.path}",
        hint=f"either set {MIRROR_ENV} to a folder that contains {spec.name}/{file.path} and the release's other "
        f"files (e.g. {MIRROR_ENV}=../shared/datasets), or allow HTTPS access to {file.urls[0]}",
    )


def fetch_source(
    spec: BidsSourceSpec,
    destination: Path,
    mirror: Path | None = None,
    downloader: Downloader = download_https,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Fetched]:
    """Fill ``destination`` with the verified files of ``spec`` and SOURCE.json, all or nothing.

    Files come from ``mirror/<spec.name>/`` when ``mirror`` is given (no network is tried), otherwise from
    their urls through ``downloader``. Raises PipelineError naming the file on a missing file, a checksum
    mismatch or a failed download; ``destination`` is then unchanged and no staging folder remains.
    """
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".fetching", dir=destination.parent))
    except OSError as exc:
        raise _write_error(exc, destination) from None
    try:
        staging = work / "new"
        fetched = []
        for file in spec.files:
            if mirror is not None:
                data, origin = _from_mirror(spec, file, mirror)
            else:
                data, origin = _from_urls(spec, file, downloader, timeout)
            target = staging / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            fetched.append(Fetched(file.path, origin))
            logger.info("%s: %s verified (sha256 %s…) from %s", spec.name, file.path, file.sha256[:12], origin)
        write_json(provenance(spec), staging / PROVENANCE_FILE)
        _swap_into_place(staging, destination, work / "old")
    except OSError as exc:  # reading sources already raised PipelineErrors: this is the local disk
        raise _write_error(exc, destination) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fetched


def _write_error(exc: OSError, destination: Path) -> PipelineError:
    return PipelineError(
        f"cannot write the fetched files ({exc.strerror or exc}); the destination is unchanged",
        file=destination,
        hint=f"check free disk space and write permission in {destination.parent}",
    )


def _swap_into_place(staging: Path, destination: Path, old: Path) -> None:
    """Replace ``destination`` by ``staging`` with renames; put the previous content back if that fails."""
    if not (destination.exists() or destination.is_symlink()):
        os.replace(staging, destination)
        return
    os.replace(destination, old)
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(old, destination)
        raise


def mirror_from_env(root: Path) -> Path | None:
    """The mirror folder from ``TRD_DATA_MIRROR`` (unset or empty: none); a relative path is taken from ``root``."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return None
    return (root / Path(value).expanduser()).resolve()


def main(source: str) -> None:
    """``trd fetch SOURCE``: fetch into data/external/<source>/ from the mirror or the canonical urls."""
    paths = ProjectPaths.discover()
    spec = load_source_spec(source, paths.sources_dir)
    mirror = mirror_from_env(paths.root)
    destination = paths.external_dir / spec.name
    logger.info("fetching %s v%s (doi:%s) from %s", spec.name, spec.version, spec.doi, mirror or "its published urls")
    fetched = fetch_source(spec, destination, mirror=mirror)
    logger.info("%s: %d files verified and written to %s", spec.name, len(fetched), destination)
