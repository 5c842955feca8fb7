"""Checkpoints and exports without pickles.

* A training checkpoint is a directory with ``state.safetensors`` (every tensor) and
  ``state.json`` (the nested structure — dicts, lists, numbers, strings — with each tensor
  replaced by a reference into the safetensors file). Optimizer, scaler and RNG states
  round-trip through it, so loading never unpickles anything.
* An exported backbone is ``backbone.safetensors`` (torchvision ResNet key names, no ``fc``)
  plus ``backbone.json`` (arch, norm, provenance, sha256 of the weights file), loadable with
  ``torchvision.models.resnet50(); m.fc = nn.Identity(); m.load_state_dict(w, strict=True)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and safetensors load inside the functions that touch tensors: reading a record needs neither
    import torch

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_CONFIG = "backbone.json"
BACKBONE_FORMAT = "torchvision-resnet-trunk/v1"


class CheckpointError(ValueError):
    """A checkpoint or export that is missing, incomplete or of the wrong kind."""


def read_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a corrupt, truncated or foreign file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "re-export it, or pull the model again with `ablate pull`"
        ) from exc


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by ``{"__tensor__": key}``; keep dict key types and tuples recoverable."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _flatten(v, tensors) for k, v in obj.items()}}
        return {"__items__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (only tensors, containers and scalars)")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def save_checkpoint(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and scalars) to ``directory``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(dict(state), tensors)  # first: a state it refuses leaves no folder behind
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(skeleton))
    return directory


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote. Never unpickles."""
    directory = Path(directory)
    for name in (STATE_TENSORS, STATE_JSON):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a checkpoint (missing {name})")
    tensors = read_tensors(directory / STATE_TENSORS, device=str(map_location))
    return _unflatten(json.loads((directory / STATE_JSON).read_text()), tensors)


def checkpoint_progress(directory: str | Path) -> tuple[int, dict[str, float]]:
    """The epoch a training checkpoint was written after, and that epoch's metrics (as reported).

    Reads ``state.json`` only (no tensors), so the driver can look into a checkpoint cheaply.
    """
    path = Path(directory) / STATE_JSON
    try:
        entries = json.loads(path.read_text())["__dict__"]
        epoch = int(_unflatten(entries["epoch"], {}))
        metrics = _unflatten(entries.get("metrics", {"__dict__": {}}), {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a training checkpoint's record ({type(exc).__name__}: {exc})") from exc
    return epoch, {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, record: Mapping[str, Any], record_name: str) -> None:
    """Raise :class:`CheckpointError` when ``record`` (read from ``record_name``) holds a sha256 ``path`` does not match."""
    if record.get("sha256") and sha256_file(path) != record["sha256"]:
        raise CheckpointError(f"{path}: sha256 does not match {record_name} (file corrupted or replaced)")


def export_backbone(directory: str | Path, trunk_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Export a ResNet trunk (torchvision key names, ``fc`` excluded) with its config.

    Args:
        directory: output folder (created).
        trunk_state: ``state_dict()`` of a torchvision ResNet whose ``fc`` is Identity.
        meta: at least ``arch`` and ``norm``; typically the whole resolved SwAV config, the
            git sha and the final metrics.
    """
    from safetensors.torch import save_file

    for key in ("arch", "norm"):
        if key not in meta:
            raise ValueError(f"export_backbone: meta must contain '{key}'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in trunk_state.items() if not k.startswith("fc.")}
    path = directory / BACKBONE_WEIGHTS
    save_file(weights, str(path), metadata={"format": BACKBONE_FORMAT, "arch": str(meta["arch"])})
    config = {"format": BACKBONE_FORMAT, **dict(meta), "sha256": sha256_file(path)}
    (directory / BACKBONE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return directory


def read_backbone_config(directory: str | Path) -> dict[str, Any]:
    """The JSON config of an exported backbone (arch, norm, ...), with a clear error if absent."""
    directory = Path(directory)
    cfg_path = directory / BACKBONE_CONFIG
    if not cfg_path.is_file() or not (directory / BACKBONE_WEIGHTS).is_file():
        raise CheckpointError(
            f"{directory}: not an exported backbone (expected {BACKBONE_WEIGHTS} and {BACKBONE_CONFIG}; "
            "produce one with `ablate pretrain` or pull one with `ablate pull`)"
        )
    config = json.loads(cfg_path.read_text())
    if config.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{cfg_path}: format {config.get('format')!r} is not {BACKBONE_FORMAT!r}")
    return config


def load_backbone_weights(directory: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and config of an exported backbone; ``verify`` checks the recorded sha256."""
    directory = Path(directory)
    config = read_backbone_config(directory)
    path = directory / BACKBONE_WEIGHTS
    if verify:
        check_sha256(path, config, BACKBONE_CONFIG)
    return read_tensors(path), config
