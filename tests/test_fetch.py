"""The fetch stage: verified, all-or-nothing copies of a public release, from a mirror or over HTTPS.

Most tests use a tiny made-up release ("demo") whose checksums are computed here; one fetches the real
ds005917 files from the shared mirror (skipped without it). No test touches the network: downloads go through
a fake downloader or a monkeypatched ``urllib.request.urlopen``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline import fetch
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.fetch import MIRROR_ENV, PROVENANCE_FILE, fetch_source, load_source_spec, mirror_from_env, provenance
from pipeline.sources.bids_spec import BidsSourceSpec

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get(MIRROR_ENV) or ROOT.parent / "shared" / "datasets")
SHARED_README = ROOT.parent / "shared" / "README.md"
needs_real = pytest.mark.skipif(not (SHARED / "ds005917").is_dir(), reason="no ds005917 mirror beside us")

DEMO_FILES = {
    "participants.tsv": b"participant_id\tgroup\nsub-01\tMDD\n",
    "phenotype/phenotype.tsv": b"participant_id\tsession_id\tMADRS_Total\nsub-01\tses-b0\t30\n",
    "dataset_description.json": b'{"Name": "demo"}\n',
}


def url_of(path: str, host: str = "https://example.org/demo") -> str:
    return f"{host}/{path}"


def demo_raw(files: dict[str, bytes] = DEMO_FILES) -> dict:
    """A valid source file for the demo release, as parsed YAML."""
    return {
        "name": "demo",
        "kind": "bids_phenotype",
        "title": "Demo release",
        "version": "1.0.0",
        "doi": "10.18112/openneuro.ds000000.v1.0.0",
        "licence": "CC0",
        "registration": "NCT00000000",
        "homepage": "https://example.org/demo",
        "citation": "Someone. Demo release. 2025.",
        "files": [
            {
                "path": path,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "urls": [url_of(path), url_of(path, "https://mirror.example.net/demo")],
            }
            for path, data in files.items()
        ],
        "adapter": {
            "participants": {"path": "participants.tsv"},
            "eligibility": {"column": "group", "levels": {"MDD": "depression"}, "include": ["MDD"]},
            "phenotype": [
                {"path": "phenotype/phenotype.tsv", "measures": {"MADRS_Total": {"ses-b0": "madrs_baseline"}}}
            ],
        },
    }


@pytest.fixture
def spec() -> BidsSourceSpec:
    return BidsSourceSpec.model_validate(demo_raw())


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A mirror folder holding demo/<path> for every demo file."""
    root = tmp_path / "mirror"
    for path, data in DEMO_FILES.items():
        target = root / "demo" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def serving(content: dict[str, bytes]) -> Callable[..., bytes]:
    """A fake downloader: the urls in ``content`` answer with their bytes, any other url is unreachable."""

    def download(url: str, *, timeout: float, max_bytes: int) -> bytes:
        assert timeout > 0
        if url not in content:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return content[url][: max_bytes + 1]

    return download


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- from a mirror ---------------------------------------------------------------------------------------------


def test_a_mirror_fetch_writes_the_verified_files_and_provenance(
    spec: BidsSourceSpec, mirror: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "external" / "demo"
    fetched = fetch_source(spec, destination, mirror=mirror, downloader=serving({}))
    files = snapshot(destination)
    assert {k: v for k, v in files.items() if k != PROVENANCE_FILE} == DEMO_FILES
    provenance_json = json.loads(files[PROVENANCE_FILE])
    assert provenance_json == provenance(spec)
    assert provenance_json["files"][0]["sha256"] == hashlib.sha256(DEMO_FILES["participants.tsv"]).hexdigest()
    assert [f.origin for f in fetched] == [str(mirror / "demo" / p) for p in DEMO_FILES]
    assert leftovers(destination.parent) == []


def test_provenance_names_no_machine_path_or_time(spec: BidsSourceSpec, mirror: Path, tmp_path: Path) -> None:
    fetch_source(spec, tmp_path / "demo", mirror=mirror)
    text = (tmp_path / "demo" / PROVENANCE_FILE).read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}T|\d{2}:\d{2}:\d{2}", text)


def test_mirror_and_download_give_identical_bytes_and_refetching_changes_nothing(
    spec: BidsSourceSpec, mirror: Path, tmp_path: Path
) -> None:
    from_mirror, downloaded = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    fetch_source(spec, from_mirror, mirror=mirror)
    fetch_source(spec, downloaded, downloader=serving({url_of(p): d for p, d in DEMO_FILES.items()}))
    assert snapshot(from_mirror) == snapshot(downloaded)

    first = snapshot(from_mirror)
    (from_mirror / "stray.txt").write_text("left by hand")
    fetch_source(spec, from_mirror, mirror=mirror)
    assert snapshot(from_mirror) == first  # replaced whole: the stray file is gone too
    assert leftovers(from_mirror.parent) == []


@needs_real
def test_the_real_release_fetches_from_the_shared_mirror(tmp_path: Path) -> None:
    spec = load_source_spec("ds005917", ROOT / "configs" / "sources")
    destination = tmp_path / "ds005917"
    fetch_source(spec, destination, mirror=SHARED, downloader=serving({}))
    for file in spec.files:
        data = (destination / file.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == file.sha256
        assert data == (SHARED / "ds005917" / file.path).read_bytes()
    assert sorted(snapshot(destination)) == sorted([*(f.path for f in spec.files), PROVENANCE_FILE])


@pytest.mark.skipif(not SHARED_README.is_file(), reason="no ../shared/README.md beside us")
def test_the_pinned_checksums_are_those_published_in_the_shared_readme() -> None:
    readme = SHARED_README.read_text(encoding="utf-8")
    published = {path: sha for sha, path in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", readme, flags=re.MULTILINE)}
    spec = load_source_spec("ds005917", ROOT / "configs" / "sources")
    assert {f.path: f.sha256 for f in spec.files} == published
    assert all(
        f.urls[0].startswith("https://raw.githubusercontent.com/OpenNeuroDatasets/ds005917/1.0.1/") for f in spec.files
    )


# --- refusals leave the destination untouched ------------------------------------------------------------------


def test_a_checksum_mismatch_is_refused_and_changes_nothing(spec: BidsSourceSpec, mirror: Path, tmp_path: Path) -> None:
    destination = tmp_path / "external" / "demo"
    fetch_source(spec, destination, mirror=mirror)
    before = snapshot(destination)
    tampered = b"participant_id\tsession_id\tMADRS_Total\nsub-01\tses-b0\t31\n"  # same size, one digit changed
    (mirror / "demo" / "phenotype" / "phenotype.tsv").write_bytes(tampered)

    with pytest.raises(PipelineError) as info:
        fetch_source(spec, destination, mirror=mirror)
    message = str(info.value)
    assert "checksum mismatch for phenotype/phenotype.tsv" in message
    assert hashlib.sha256(DEMO_FILES["phenotype/phenotype.tsv"]).hexdigest() in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert info.value.exit_code == ExitCode.INPUT
    assert snapshot(destination) == before
    assert leftovers(destination.parent) == []


def test_a_file_of_the_wrong_size_is_refused_unread(spec: BidsSourceSpec, mirror: Path, tmp_path: Path) -> None:
    (mirror / "demo" / "participants.tsv").write_bytes(DEMO_FILES["participants.tsv"] * 1000)
    with pytest.raises(PipelineError, match=r"checksum mismatch for participants\.tsv.*got \(not computed\)"):
        fetch_source(spec, tmp_path / "demo", mirror=mirror)


def test_a_later_failure_leaves_no_destination_at_all(spec: BidsSourceSpec, mirror: Path, tmp_path: Path) -> None:
    (mirror / "demo" / "dataset_description.json").write_bytes(b'{"Name": "DEMO"}\n')  # the last file
    with pytest.raises(PipelineError, match=r"dataset_description\.json"):
        fetch_source(spec, tmp_path / "demo", mirror=mirror)
    assert list(tmp_path.iterdir()) == [mirror]


def test_a_file_missing_from_the_mirror_is_named(spec: BidsSourceSpec, mirror: Path, tmp_path: Path) -> None:
    (mirror / "demo" / "phenotype" / "phenotype.tsv").unlink()
    with pytest.raises(PipelineError, match=r"phenotype/phenotype\.tsv is missing from the data mirror") as info:
        fetch_source(spec, tmp_path / "demo", mirror=mirror)
    assert info.value.file == mirror / "demo" / "phenotype" / "phenotype.tsv"
    assert MIRROR_ENV in info.value.hint
    assert not (tmp_path / "demo").exists()


def test_a_mirror_without_the_source_folder_says_so(spec: BidsSourceSpec, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="the data mirror has no 'demo' folder") as info:
        fetch_source(spec, tmp_path / "demo", mirror=tmp_path / "empty")
    assert "https://example.org/demo/participants.tsv" in info.value.hint


def test_a_failed_swap_puts_the_previous_content_back(
    spec: BidsSourceSpec, mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "demo"
    fetch_source(spec, destination, mirror=mirror)
    before = snapshot(destination)
    moves: list[tuple[str, str]] = []
    real_replace = os.replace

    def flaky_replace(src: Path, dst: Path) -> None:
        if Path(dst) == destination:
            moves.append((Path(src).name, Path(dst).name))
            if Path(src).name == "new":  # the old content is aside, the new one about to move in: the disk fails
                raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(PipelineError, match=r"No space left on device.*the destination is unchanged") as info:
        fetch_source(spec, destination, mirror=mirror)
    assert "free disk space" in info.value.hint
    assert moves == [("new", "demo"), ("old", "demo")]  # the failed move in, then the restore
    assert snapshot(destination) == before
    assert leftovers(tmp_path) == []


# --- over HTTPS ---------------------------------------------------------------------------------------------------


def test_without_mirror_and_network_one_message_gives_both_ways(spec: BidsSourceSpec, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        fetch_source(spec, tmp_path / "demo", downloader=serving({}))
    text = str(info.value)
    assert text.count("could not download") == 1
    assert "Name or service not known" in text
    assert f"set {MIRROR_ENV} to a folder that contains demo/participants.tsv" in text
    assert "allow HTTPS access to https://example.org/demo/participants.tsv" in text
    assert not (tmp_path / "demo").exists()
    assert leftovers(tmp_path) == []


def test_the_default_downloader_without_network_gives_the_same_message(
    spec: BidsSourceSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(request: urllib.request.Request, timeout: float) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(PipelineError, match="Temporary failure in name resolution") as info:
        fetch_source(spec, tmp_path / "demo")
    assert MIRROR_ENV in info.value.hint
    assert "allow HTTPS access to https://example.org/demo/participants.tsv" in info.value.hint


def test_a_url_serving_the_wrong_bytes_falls_back_to_the_next(spec: BidsSourceSpec, tmp_path: Path) -> None:
    content = {url_of(p): d for p, d in DEMO_FILES.items()}
    content[url_of("participants.tsv")] = b"version https://git-lfs.github.com/spec/v1\n"  # a pointer file
    content[url_of("participants.tsv", "https://mirror.example.net/demo")] = DEMO_FILES["participants.tsv"]
    fetched = fetch_source(spec, tmp_path / "demo", downloader=serving(content))
    assert fetched[0].origin == "https://mirror.example.net/demo/participants.tsv"
    assert (tmp_path / "demo" / "participants.tsv").read_bytes() == DEMO_FILES["participants.tsv"]


def test_when_every_url_serves_wrong_bytes_the_mismatch_is_reported(spec: BidsSourceSpec, tmp_path: Path) -> None:
    content = {url_of(p): d for p, d in DEMO_FILES.items()}
    content[url_of("participants.tsv")] = b"something else entirely, and longer than the file"
    with pytest.raises(PipelineError, match=r"checksum mismatch for participants\.tsv.*content differs") as info:
        fetch_source(spec, tmp_path / "demo", downloader=serving(content))
    assert "mirror.example.net" in str(info.value)  # the unreachable second url is reported too
    assert not (tmp_path / "demo").exists()


class FakeResponse(io.BytesIO):
    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_the_default_downloader_sends_a_user_agent_honours_the_timeout_and_bounds_the_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = {}

    def urlopen(request: urllib.request.Request, timeout: float) -> FakeResponse:
        seen.update(url=request.full_url, agent=request.get_header("User-agent"), timeout=timeout)
        return FakeResponse(b"x" * 1000)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert fetch.download_https("https://example.org/f", timeout=7.5, max_bytes=10) == b"x" * 11
    assert seen == {"url": "https://example.org/f", "agent": fetch.USER_AGENT, "timeout": 7.5}


def test_the_default_downloader_refuses_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not connect"))
    with pytest.raises(urllib.error.URLError, match="non-https"):
        fetch.download_https("http://example.org/f", timeout=1, max_bytes=1)


# --- the source file -------------------------------------------------------------------------------------------


def write_sources(folder: Path, **files: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def test_an_unknown_source_lists_the_known_ones(tmp_path: Path) -> None:
    sources = write_sources(tmp_path, demo=demo_raw(), synthetic={"name": "synthetic", "kind": "tabular_export"})
    with pytest.raises(ConfigError, match="unknown source 'nope'") as info:
        load_source_spec("nope", sources)
    assert info.value.exit_code == ExitCode.CONFIG
    assert "choose one of: demo;" in info.value.hint
    with pytest.raises(ConfigError, match="unknown source"):
        load_source_spec("../demo", sources)


def test_a_source_that_is_not_a_public_dataset_is_refused(tmp_path: Path) -> None:
    sources = write_sources(tmp_path, demo=demo_raw(), synthetic={"name": "synthetic", "kind": "tabular_export"})
    with pytest.raises(ConfigError, match=r"'synthetic' .* is not a public dataset to fetch") as info:
        load_source_spec("synthetic", sources)
    assert "trd synthesize" in info.value.hint


def broken(**changes: object) -> dict:
    raw = demo_raw()
    for key, value in changes.items():
        if key.startswith("file0_"):
            raw["files"][0][key.removeprefix("file0_")] = value
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: demo\nkind: bids\nfiles: [\n", "not valid YAML"),
        ("- a list\n", "must be a mapping"),
        (broken(sha="x"), "sha: Extra inputs are not permitted"),
        (broken(file0_sha256="ABC"), r"demo\.files\.0\.sha256: String should match pattern"),
        (broken(file0_urls=["http://example.org/x"]), "must be an https:// url"),
        (broken(file0_urls=[]), "files.0.urls"),
        (broken(file0_path="/etc/passwd"), "relative path"),
        (broken(file0_path="../outside.tsv"), "relative path"),
        (
            broken(files=[*demo_raw()["files"], {**demo_raw()["files"][0], "path": "SOURCE.json"}]),
            "written by the fetch",
        ),
        (broken(files=demo_raw()["files"][1:]), r"adapter tables \['participants.tsv'\] are not in files"),
        (broken(files=demo_raw()["files"] * 2), "lists a path twice"),
        (broken(version="v1"), "version"),
        (broken(name="other"), "differs from the file name"),
    ],
)
def test_a_broken_source_file_is_a_config_error_naming_it(tmp_path: Path, content: dict | str, message: str) -> None:
    sources = write_sources(tmp_path, demo=content)
    with pytest.raises(ConfigError, match=message) as info:
        load_source_spec("demo", sources)
    assert info.value.file == sources / "demo.yaml"


def test_the_committed_source_file_is_valid() -> None:
    spec = load_source_spec("ds005917", ROOT / "configs" / "sources")
    assert (spec.version, spec.doi, spec.licence, spec.registration) == (
        "1.0.1",
        "10.18112/openneuro.ds005917.v1.0.1",
        "CC0",
        "NCT00088699",
    )
    assert all(len(f.urls) == 2 and "1.0.1" in f.urls[0] and "1.0.1" in f.urls[1] for f in spec.files)


# --- main: paths and the environment --------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    write_sources(root / "configs" / "sources", demo=demo_raw())
    monkeypatch.setenv("TRD_PROJECT_ROOT", str(root))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return root


def test_main_fetches_from_the_mirror_in_the_environment(
    project: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    fetch.main("demo")
    assert snapshot(project / "data" / "external" / "demo")["participants.tsv"] == DEMO_FILES["participants.tsv"]


def test_main_without_mirror_or_network_explains_both_ways(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(request: urllib.request.Request, timeout: float) -> None:
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(PipelineError, match="could not download") as info:
        fetch.main("demo")
    assert MIRROR_ENV in info.value.hint
    assert "allow HTTPS access" in info.value.hint
    assert not (project / "data" / "external" / "demo").exists()


def test_main_with_an_unknown_source_is_a_config_error(project: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source 'ds000000'"):
        fetch.main("ds000000")


def test_the_mirror_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert mirror_from_env(tmp_path) is None
    monkeypatch.setenv(MIRROR_ENV, "  ")
    assert mirror_from_env(tmp_path) is None
    monkeypatch.setenv(MIRROR_ENV, "../shared/datasets")  # relative to the project root, not the cwd
    assert mirror_from_env(tmp_path / "project") == (tmp_path / "shared" / "datasets").resolve()
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "m"))
    assert mirror_from_env(tmp_path / "project") == (tmp_path / "m").resolve()
