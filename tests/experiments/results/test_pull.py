"""experiments/results/pull.py: `ablate pull` of registered versions (conftest.py's ``registry_store``) into a
verified folder, and its refusals: unknown model / alias / version, a destination that is not new, empty or an earlier
pull, protected folders, a checksum mismatch, unsafe artifact paths and symlinks. The destination rules also run
offline, with the store faked and everything about the destination real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.entities import FileInfo

from experiments.results.pull import pull
from experiments.results.registry import RegistryError
from tests.experiments.results.helpers import BB, DET, model_dir
from trainers.checkpoints import load_backbone_weights, sha256_file
from trainers.detection import load_detector
from trainers.swav import load_backbone
from trainers import vocabulary as V


@pytest.fixture
def store(registry_store: dict[str, Any]) -> dict[str, Any]:
    """The registry study (conftest.py), built once per session."""
    return registry_store


def test_pull_alias_and_version(store: dict[str, Any], tmp_path: Path) -> None:
    uri = store["uri"]
    champion = pull(f"{DET}@champion", tmp_path / "champ", uri)
    first = pull(f"{DET}/1", tmp_path / "v1", uri)
    bare = pull(DET, tmp_path / "bare", uri)  # a bare name means @champion
    for folder in (champion, first, bare):
        assert {p.name for p in folder.iterdir()} == {"detector.safetensors", "detector.json", "config.json",
                                                       "config.yaml", "MODEL_CARD.md"}
        load_detector(folder)  # the layout load_detector expects
    assert sha256_file(first / "detector.safetensors") == sha256_file(store["exports"]["det_a"] / "detector.safetensors")
    assert sha256_file(champion / "detector.safetensors") == sha256_file(store["exports"]["det_b"] / "detector.safetensors")
    assert sha256_file(bare / "detector.safetensors") == sha256_file(champion / "detector.safetensors")
    card = (first / "MODEL_CARD.md").read_text()
    assert store["a"] in card and store["pre"] in card and "load_detector" in card and str(first) in card
    assert json.loads((first / "config.json").read_text())["arch"] == "resnet18"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    backbone = pull(f"{BB}@champion", tmp_path / "bb", uri)
    trunk = load_backbone(backbone)
    reference, _ = load_backbone_weights(store["bb_dir"])
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in reference.items())
    assert sha256_file(backbone / "backbone.safetensors") == sha256_file(store["bb_dir"] / "backbone.safetensors")


def test_pull_matches_plain_mlflow_download(store: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    plain = Path(mlflow.artifacts.download_artifacts(f"models:/{DET}@champion", dst_path=str(tmp_path / "plain")))
    pulled = pull(f"{DET}@champion", tmp_path / "pulled", store["uri"])
    for name in ("detector.safetensors", "detector.json", "config.json", "config.yaml"):
        assert (plain / "artifacts" / "detector" / name).read_bytes() == (pulled / name).read_bytes()


@pytest.mark.parametrize("spec, message", [
    ("nosuch-detector@champion", "no registered model 'nosuch-detector'"),
    (f"{DET}@staging", "has no alias 'staging'; aliases: champion -> v2"),
    (f"{DET}/9", "has no version 9; versions: 1, 2, 3"),
    ("bad spec!", "is invalid"),
])
def test_pull_unknown_model_alias_version(store: dict[str, Any], tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message.replace("(", r"\(")):
        pull(spec, tmp_path / "out", store["uri"])
    assert not (tmp_path / "out").exists()


def test_pull_destination_problems(store: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(RegistryError, match="not writable|not a folder"):
        pull(f"{DET}@champion", blocker / "sub", store["uri"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(RegistryError, match="not empty"):
        pull(f"{DET}@champion", full, store["uri"])
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    # --overwrite replaces an earlier pull only: a folder holding anything else is left as it was
    with pytest.raises(RegistryError, match=r"not an earlier pull: it holds mine\.txt \(1 entry\).*nothing was deleted"):
        pull(f"{DET}@champion", full, store["uri"], overwrite=True)
    assert [p.name for p in full.iterdir()] == ["mine.txt"] and (full / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "full"]  # no staging folder left


def test_pull_overwrite_replaces_an_earlier_pull(store: dict[str, Any], tmp_path: Path) -> None:
    dest = pull(f"{DET}/1", tmp_path / "model", store["uri"])
    with pytest.raises(RegistryError, match="holds an earlier pull; pass --overwrite"):
        pull(f"{DET}/2", dest, store["uri"])
    assert pull(f"{DET}/2", dest, store["uri"], overwrite=True) == dest
    assert sha256_file(dest / "detector.safetensors") == sha256_file(store["exports"]["det_b"] / "detector.safetensors")
    assert (dest / "MODEL_CARD.md").read_text().startswith(f"# {DET} v2")
    # a backbone pull over the detector pull: both are earlier pulls, nothing of the detector is left
    pull(f"{BB}@champion", dest, store["uri"], overwrite=True)
    assert {p.name for p in dest.iterdir()} == {"backbone.safetensors", "backbone.json", "config.json", "config.yaml",
                                                "MODEL_CARD.md"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old folder left behind


@pytest.mark.parametrize("where", ["dest is cwd", "dest contains the store"])
def test_pull_overwrite_never_replaces_a_project_folder(store: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """`ablate pull X --dest . --overwrite` in a project folder: the store, sources and notes all stay."""
    import sqlite3

    project = tmp_path / "project"
    (project / "mlruns").mkdir(parents=True)
    db = project / "mlruns" / "mlflow.db"
    with sqlite3.connect(Path(store["uri"][len("sqlite:///"):])) as src, sqlite3.connect(db) as copy:
        src.backup(copy)  # the same registry; the artifacts stay where the fixture logged them
    (project / "notes.md").write_text("notes")
    (project / "train.py").write_text("print()")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    if where == "dest is cwd":
        monkeypatch.chdir(project)
        dest, message = ".", "is the current folder"
    else:
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        dest, message = str(project), "contains the MLflow store"
    with pytest.raises(RegistryError, match=f"{message}.*: a pull never replaces it .*--dest pulled_model"):
        pull(f"{DET}@champion", dest, f"sqlite:///{db}", overwrite=True)
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checksum_mismatch_is_refused(store: dict[str, Any], tmp_path: Path) -> None:
    weights = model_dir(store, DET, "1") / "artifacts" / "detector" / "detector.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + bytes(8))  # corrupt the stored weights
        with pytest.raises(RegistryError, match="sha256"):
            pull(f"{DET}/1", tmp_path / "out", store["uri"])
    finally:
        weights.write_bytes(original)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("evil", ["artifacts/detector/../../../escape.txt", "/etc/passwd", "artifacts\\..\\x"])
def test_path_traversal_refused(store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                evil: str) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    honest = LocalArtifactRepository.list_artifacts

    def listing(self: Any, path: str | None = None) -> list[FileInfo]:
        return [*honest(self, path), FileInfo(evil, False, 10)] if not path else honest(self, path)

    monkeypatch.setattr(LocalArtifactRepository, "list_artifacts", listing)
    with pytest.raises(RegistryError, match="refusing artifact path"):
        pull(f"{DET}/1", tmp_path / "out", store["uri"])
    assert not list(tmp_path.iterdir())


def test_symlink_out_of_the_store_refused(store: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a model file")
    link = model_dir(store, DET, "1") / "artifacts" / "detector" / "extra.txt"
    link.symlink_to(secret)
    try:
        with pytest.raises(RegistryError, match="symlink"):
            pull(f"{DET}/1", tmp_path / "out", store["uri"])
    finally:
        link.unlink()
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Offline: `ablate pull --overwrite` replaces an earlier pull, never a folder of other files
# ---------------------------------------------------------------------------


def _offline_pull(monkeypatch, tmp_path) -> str:
    """Make ``pull`` run without a store: a fake ``detector`` v3 whose download writes the
    four model files. Everything about the destination (checks, staging, the final rename) is real.
    Returns a tracking URI of a (never opened) sqlite store, ``tmp_path/lab/mlruns/mlflow.db``."""
    from types import SimpleNamespace

    from experiments.results import pull as pulling

    version = SimpleNamespace(version="3", run_id="0" * 32, aliases=["champion"],
                              tags={V.TAG_KIND: "detector", V.TAG_WEIGHTS_SHA: "0" * 64})

    def download(client, uri, name, version, staging):
        for name in ("detector.safetensors", "detector.json", "config.json", "config.yaml"):
            (staging / name).write_text(name)
        return "detector"

    monkeypatch.setattr(pulling, "open_registry", lambda uri: object())
    monkeypatch.setattr(pulling, "_resolve_version", lambda client, name, alias, version_id: version)
    monkeypatch.setattr(pulling, "_download_version", download)
    monkeypatch.setattr(pulling, "_verify", lambda *args: None)
    return f"sqlite:///{tmp_path}/lab/mlruns/mlflow.db"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else "/" for p in sorted(root.rglob("*"))}


def test_pull_overwrite_does_not_delete_foreign_files(tmp_path, monkeypatch):
    from experiments.results.pull import pull
    from experiments.results.registry import RegistryError

    uri = _offline_pull(monkeypatch, tmp_path)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "train.py").write_text("print('mine')")
    (project / "notes.md").write_text("results so far")
    (project / "config.json").write_text("{}")  # a pull's file name, but no model card: still not a pull
    before = _tree(project)
    with pytest.raises(RegistryError, match=r"not an earlier pull: it holds notes\.md, src/ \(2 entries\)"
                                            r".*nothing was deleted.*--dest pulled_model"):
        pull("x-detector@champion", project, uri, overwrite=True)
    assert _tree(project) == before
    # an earlier pull with a file added by hand: the file is foreign, so the folder is kept whole
    model = pull("x-detector@champion", tmp_path / "model", uri)
    (model / "my-eval.csv").write_text("AP50,0.5")
    before = _tree(model)
    with pytest.raises(RegistryError, match=r"it holds my-eval\.csv \(1 entry\)"):
        pull("x-detector@champion", model, uri, overwrite=True)
    assert _tree(model) == before
    # a MODEL_CARD.md that `ablate pull` did not write does not make a folder replaceable
    (model / "my-eval.csv").unlink()
    (model / "MODEL_CARD.md").write_text("# my own notes\n")
    with pytest.raises(RegistryError, match="MODEL_CARD.md was not written by `ablate pull`"):
        pull("x-detector@champion", model, uri, overwrite=True)
    assert (model / "MODEL_CARD.md").read_text() == "# my own notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "project"]  # no staging or old folder left


@pytest.mark.parametrize("case", ["current folder", "working directory's parent", "home folder", "store folder",
                                  "store's parent"])
def test_pull_overwrite_refuses_protected_folders(tmp_path, monkeypatch, case):
    from experiments.results.pull import pull
    from experiments.results.registry import RegistryError

    uri = _offline_pull(monkeypatch, tmp_path)
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "lab" / "mlruns").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    dest, message = {
        "current folder": (".", "is the current folder"),
        "working directory's parent": ("..", "contains the working directory"),
        "home folder": (str(home), "is your home folder"),
        "store folder": (str(tmp_path / "lab" / "mlruns"), "contains the MLflow store"),
        "store's parent": (str(tmp_path / "lab"), "contains the MLflow store"),
    }[case]
    before = _tree(tmp_path)
    # empty or not, with --overwrite or without: these folders are never replaced
    for overwrite in (True, False):
        with pytest.raises(RegistryError, match=f"{message}.*a pull never replaces it"):
            pull("x-detector@champion", dest, uri, overwrite=overwrite)
    assert _tree(tmp_path) == before


def test_pull_never_replaces_the_filesystem_root(tmp_path):
    from experiments.results.pull import _prepare_dest
    from experiments.results.registry import RegistryError

    with pytest.raises(RegistryError, match="is the filesystem root"):
        _prepare_dest(Path("/"), True, f"sqlite:///{tmp_path}/mlflow.db")

