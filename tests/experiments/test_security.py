"""Security properties: no unpickling of untrusted files, no secrets in the tracking store.

* A malicious pickle (its ``__reduce__`` would create a marker file), saved as a ``.pt`` or
  disguised as ``*.safetensors``, is refused by every loader of checkpoints and pulled models,
  and by ``torch.load(weights_only=True)``; the marker is never created. The same file *is*
  live: ``torch.load(weights_only=False)`` creates the marker, so the refusals are real.
* No module calls an unpickling loader (AST scan of trainers/ and experiments/).
* ``redact`` / ``scrub_mapping`` blank credentials in URIs, key=value text, headers, mappings.
* End to end, in team mode (tests/e2e/test_s3.py, one launch for both): ``ablate launch
  --address`` on a ``ray start`` cluster, tracking to a basic-auth server whose artifacts are in an
  S3 bucket, the password in the tracking URI, ``MLFLOW_TRACKING_PASSWORD`` and the Optuna URL; the
  password and the S3 secret key are nowhere in the backend database, the bucket, the launch's
  folder or any Ray node's temp dir afterwards.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from experiments.store import redaction as R
from trainers.checkpoints import (
    BACKBONE_CONFIG, BACKBONE_FORMAT, BACKBONE_WEIGHTS, STATE_JSON, STATE_TENSORS, CheckpointError, load_backbone_weights,
    load_checkpoint, sha256_file,
)
from trainers import vocabulary as V

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_bytes(kind: str, marker: Path, tmp: Path) -> bytes:
    if kind == "torch-zip":  # what `torch.save` writes: a zip with a data.pkl inside
        path = tmp / "evil.pt"
        torch.save({"model": {"weight": torch.zeros(2)}, "extra": _Payload(marker)}, path)
        return path.read_bytes()
    return pickle.dumps({"extra": _Payload(marker)}, protocol=2)  # a legacy raw pickle


@pytest.fixture(params=["torch-zip", "raw-pickle"])
def evil(request, tmp_path):
    """(bytes of a malicious pickle, the marker it would create)."""
    marker = tmp_path / f"PWNED-{request.param}"
    return _malicious_bytes(request.param, marker, tmp_path), marker


def _refused(call, marker: Path) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: PT011 - the loaders differ in error type; all must refuse
        call()
    assert not marker.exists(), f"the payload ran: {marker} was created"
    return info.value


def test_torch_load_weights_only_refuses_the_payload(evil, tmp_path):
    data, marker = evil
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    err = _refused(lambda: torch.load(path, weights_only=True), marker)
    assert isinstance(err, pickle.UnpicklingError)
    # the file is armed: an unsafe load runs the payload (so the refusals above mean something)
    try:
        torch.load(path, weights_only=False)
    except Exception:  # noqa: BLE001 - the payload may break the rest of the load; only the marker matters
        pass
    assert marker.exists()


def test_load_checkpoint_refuses_pickle_disguised_as_safetensors(evil, tmp_path):
    data, marker = evil
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / STATE_TENSORS).write_bytes(data)
    (ckpt / STATE_JSON).write_text(json.dumps({"__dict__": {"model": {"__tensor__": "t0"}}}))
    err = _refused(lambda: load_checkpoint(ckpt), marker)
    assert isinstance(err, CheckpointError) and str(ckpt / STATE_TENSORS) in str(err)


def _fake_backbone(folder: Path, data: bytes) -> Path:
    folder.mkdir()
    (folder / BACKBONE_WEIGHTS).write_bytes(data)
    # a matching sha256: the integrity check passes, so the loader itself must refuse the bytes
    meta = {"format": BACKBONE_FORMAT, "arch": "resnet18", "norm": "bn", "sha256": sha256_file(folder / BACKBONE_WEIGHTS)}
    (folder / BACKBONE_CONFIG).write_text(json.dumps(meta))
    return folder


def test_backbone_loaders_refuse_the_payload(evil, tmp_path):
    from trainers.swav import load_backbone

    data, marker = evil
    folder = _fake_backbone(tmp_path / "backbone", data)
    for load in (load_backbone_weights, load_backbone):
        err = _refused(lambda: load(folder), marker)
        # one clear error that names the file, not the safetensors library's own
        assert isinstance(err, CheckpointError) and str(folder / BACKBONE_WEIGHTS) in str(err)


def test_load_detector_refuses_the_payload(evil, tmp_path):
    from trainers.detection import DETECTOR_CONFIG, DETECTOR_FORMAT, DETECTOR_WEIGHTS, load_detector
    from trainers.detection.config import MODEL_FIELDS

    data, marker = evil
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / DETECTOR_WEIGHTS).write_bytes(data)
    model = {"arch": "resnet18", "norm": "frozen_bn", "head": "mlp", "min_size": 64, "max_size": 64,
             "rpn_pre_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_train": 20,
             "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16, "detections_per_img": 10}
    assert set(model) == set(MODEL_FIELDS)
    record = {"format": DETECTOR_FORMAT, "model": model, "num_classes": 2, "class_names": ["a", "b"],
              "label_to_cat_id": {"1": 1, "2": 2}, "sha256": sha256_file(folder / DETECTOR_WEIGHTS)}
    (folder / DETECTOR_CONFIG).write_text(json.dumps(record))
    err = _refused(lambda: load_detector(folder), marker)
    assert isinstance(err, CheckpointError) and str(folder / DETECTOR_WEIGHTS) in str(err)


# ---------------------------------------------------------------------------
# No unpickling loader anywhere in the code
# ---------------------------------------------------------------------------

_FORBIDDEN_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
                    ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"),
                    ("pd", "read_pickle"), ("pandas", "read_pickle")}


def _unsafe_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        name = node.func.attr
        kw = {k.arg: k.value for k in node.keywords}
        if (owner, name) in _FORBIDDEN_CALLS:
            found.append(f"line {node.lineno}: {owner}.{name}")
        elif owner == "torch" and name == "load":
            flag = kw.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load":
            flag = kw.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"line {node.lineno}: np.load(allow_pickle=True)")
    return found


def test_scanner_finds_unsafe_loads():
    bad = "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
    assert len(_unsafe_calls(bad)) == 3
    assert _unsafe_calls("import torch\ntorch.load(p, weights_only=True, map_location='cpu')\n") == []


def test_no_module_unpickles():
    problems = []
    for package in ("trainers", "experiments"):
        for path in sorted((ROOT / package).rglob("*.py")):
            problems += [f"{path.relative_to(ROOT)} {p}" for p in _unsafe_calls(path.read_text())]
    assert not problems, "unpickling loaders found:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------
# redact / scrub_mapping
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, secret", [
    ("postgresql+psycopg://mlflow:Sup3r-S3cret@db:5432/mlflow", "Sup3r-S3cret"),
    ("http://admin:p%40ss-word-1@127.0.0.1:5000", "p%40ss-word-1"),
    ("http://admin:p@ss-word-1@127.0.0.1:5000/api", "p@ss-word-1"),
    ("ABLATE_ADMIN_PASSWORD=hunter2-hunter2", "hunter2-hunter2"),
    ('{"client_secret": "abc-123-xyz"}', "abc-123-xyz"),
    ("aws_secret_access_key: AKIAEXAMPLE", "AKIAEXAMPLE"),
    ("mlflow server --password topsecretvalue", "topsecretvalue"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30", "eyJhbGciOiJIUzI1NiJ9.e30"),
    ("Authorization: Basic YWRtaW46c2VjcmV0cGFzcw==", "YWRtaW46c2VjcmV0cGFzcw=="),
    ("s3://bucket/x?X-Amz-Security-Token=FwoGZXIvYXdzEBYaDH", "FwoGZXIvYXdzEBYaDH"),
])
def test_redact_blanks_credentials(text, secret):
    out = R.redact(text, use_env=False)
    assert secret not in out and R.REDACTED in out


@pytest.mark.parametrize("text", [
    "sqlite:////home/me/mlruns/mlflow.db", "http://127.0.0.1:5000", "postgresql+psycopg://postgres@db:5432/x",
    "swav/loss 8.006 at epoch 3", "max_tokens=5", "wrong password for user admin", "s3://bucket/prefix",
])
def test_redact_leaves_harmless_text(text):
    assert R.redact(text, use_env=False) == text


def test_redact_blanks_secret_env_values_anywhere(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Zq9-env-secret")
    monkeypatch.setenv("HOME_DIR_NAME", "Zq9-not-a-secret")  # not secret-looking: kept
    text = "Traceback ... ConnectionError('auth failed for Zq9-env-secret'), url-encoded Zq9-env-secret; Zq9-not-a-secret"
    out = R.redact(text)
    assert "Zq9-env-secret" not in out and "Zq9-not-a-secret" in out
    assert R.redact("x Zq9-literal-1 y", extra_secrets=["Zq9-literal-1"], use_env=False) == "x *** y"


def test_scrub_mapping():
    params = {"pretrain.arch": "resnet18", "pretrain.epochs": 3, "db_password": "pw-123456", "api_token": "",
              "storage_path": "s3://key:s3cr3t-val@bucket/x", "nested": {"token": "tok-123456", "ok": ["a", 1]},
              "swav/max_tokens": "7", "lr": 0.1}
    out = R.scrub_mapping(params)
    assert out["pretrain.arch"] == "resnet18" and out["pretrain.epochs"] == 3 and out["lr"] == 0.1
    assert out["db_password"] == R.REDACTED and out["api_token"] == ""  # an empty secret stays visibly empty
    assert out["storage_path"] == "s3://key:***@bucket/x"
    assert out["nested"] == {"token": R.REDACTED, "ok": ["a", 1]}
    assert out["swav/max_tokens"] == "7"
    assert params["db_password"] == "pw-123456"  # the input is not modified


# ---------------------------------------------------------------------------
# `ablate pull --overwrite` replaces an earlier pull, never a folder of other files
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
