"""The house rule that nothing unpickles an untrusted file.

* A malicious pickle (its ``__reduce__`` would create a marker file), saved as a ``.pt`` or
  disguised as ``*.safetensors``, is refused by every loader of checkpoints and pulled models,
  and by ``torch.load(weights_only=True)``; the marker is never created. The same file *is*
  live: ``torch.load(weights_only=False)`` creates the marker, so the refusals are real.
* No module calls an unpickling loader (AST scan of trainers/ and experiments/).

Credentials are kept out of the tracking store by :mod:`experiments.store.redaction`
(tests/experiments/store/test_redaction.py); a pull never replaces a folder of other files
(tests/experiments/results/test_pull.py); end to end, in team mode, tests/e2e/test_s3.py checks that
the password and the S3 secret key are nowhere in the backend database, the bucket, the launch's
folder or any Ray node's temp dir.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from trainers.checkpoints import (
    BACKBONE_CONFIG, BACKBONE_FORMAT, BACKBONE_WEIGHTS, STATE_JSON, STATE_TENSORS, CheckpointError, load_backbone_weights,
    load_checkpoint, sha256_file,
)

ROOT = Path(__file__).resolve().parents[1]
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
