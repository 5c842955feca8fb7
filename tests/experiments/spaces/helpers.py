"""Helpers of the search-space tests (tests/experiments/spaces/): the shipped spaces and their expected plans, the
sample set's paths, and small space files written for a test."""

from __future__ import annotations

from pathlib import Path

import yaml

from experiments import spaces

ROOT = Path(__file__).resolve().parents[3]
SPACES = ROOT / "search_spaces"

# file -> (unique pretraining runs, fine-tuning trials, pretraining cells before dedup)
EXPECTED = {
    "smoke.yaml": (2, 4, 2),
    "paper_table1.yaml": (5, 18, 5),
    "norm_type.yaml": (2, 12, 2),
    "box_head.yaml": (1, 9, 1),
    "lr_scheme.yaml": (1, 9, 1),
    "queue_start.yaml": (2, 6, 2),
    "crop_scales.yaml": (2, 6, 2),
    "mixed_precision.yaml": (2, 6, 2),
    "paper_full.yaml": (9, 48, 9),
    "fidelity.yaml": (2, 12, 2),  # SwAV and the supervised positive control; 4 arms x 3 seeds
    "fidelity_gpu.yaml": (2, 18, 2),  # ... and both pretrained trunks fine-tuned two ways, on one GPU
}


def sample_paths(sample_data) -> dict[str, str]:
    """The sample set's paths; its unlabeled folder stands in with a labels file of its own beside the images (a
    supervised pretraining case plans only when its classes exist: the digits set writes them)."""
    paths = {k: str(getattr(sample_data, k)) for k in spaces.DATA_PATH_KEYS}
    labeled = Path(sample_data.root).parent / "unlabeled-with-labels"
    if not labeled.exists():
        labeled.mkdir()
        (labeled / "labels.json").write_text('{"a.jpg": "0", "b.jpg": "1"}')
    return {**paths, "unlabeled": str(labeled)}


def write_base(tmp_path: Path, body: dict, sample_data) -> Path:
    """``broken.yaml``: a small valid space on the sample set with ``body`` merged in (a section key by key)."""
    base = {"name": "broken", "data": {"root": str(sample_data.root)},
            "pretrain": {"fixed": {"arch": "resnet18", "epochs": 2}}, "finetune": {"fixed": {"epochs": 1}}}
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def write_sample_space(tmp_path: Path, sample: dict, sample_data) -> Path:
    """:func:`write_base` with ``data: {sample: ...}`` (a generated sample set) in place of its data root."""
    path = write_base(tmp_path, {}, sample_data)
    body = yaml.safe_load(path.read_text())
    body["data"] = {"sample": sample}  # replaces `root` (`write_base` would merge the two)
    path.write_text(yaml.safe_dump(body))
    return path


def smoke_with(tmp_path: Path, edit, name: str = "space.yaml") -> Path:
    """The shipped smoke.yaml with ``edit`` applied to its mapping, written to ``tmp_path/name``."""
    data = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
