"""Pieces both trainers share: config loading and validation, hashing, seeding,
mixed precision, learning-rate schedules and the non-finite-loss guard.

Kept free of ray, mlflow and optuna (docs/ARCHITECTURE.md: trainers are pure PyTorch).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import yaml

if TYPE_CHECKING:  # torch loads inside the functions that use it: reading and validating configs needs none
    import torch

C = TypeVar("C")
log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite, so the trial is marked failed."""


# ---------------------------------------------------------------------------
# YAML with unique keys
# ---------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names the same key twice (plain YAML loaders silently keep the later value).

    Attributes:
        key_path: where the mapping sits plus the key, e.g. ``pretrain.fixed.epochs`` or ``cases[1].norm``.
        key: the repeated key as loaded.
        first, second: the marks (file, line, column) of its two occurrences.
    """

    def __init__(self, key_path: str, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        self.key_path, self.key, self.first, self.second = key_path, key, first, second
        super().__init__(None, None, self.describe(), second)

    def describe(self) -> str:
        """``key path: what is repeated where — the fix``, without the file name (callers prefix it)."""
        a, b = self.first, self.second
        where = (f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}" if a.line == b.line
                 else f"lines {a.line + 1} and {b.line + 1}")
        return (f"{self.key_path}: key {self.key!r} is given twice ({where}); YAML would silently keep the "
                f"second value — delete one of them")


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any nesting level.

    The check runs on the composed node tree, before construction, so it knows each mapping's key
    path and both line numbers. Merge keys (``<<: *defaults``) keep their YAML meaning: a key written
    beside a merge overrides the merged one, which is what merges are for.

    Args:
        stream: the YAML text (or a file object).
        name: what error marks call the source (a file path); PyYAML's default is ``<unicode string>``.
    """

    def __init__(self, stream: Any, name: str | None = None) -> None:
        super().__init__(stream)
        if name is not None:
            self.name = name  # the reader stamps it on every mark, so every YAML error names the file

    def construct_document(self, node: yaml.Node) -> Any:
        self.check_unique_keys(node)
        return super().construct_document(node)

    def check_unique_keys(self, root: yaml.Node) -> None:
        """Raise :class:`DuplicateKeyError` for the first repeated key in document order."""
        visited: set[int] = set()
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        while stack:  # a loop, not recursion: a hostile file can nest deeper than Python's stack
            node, where = stack.pop()
            if id(node) in visited:  # an alias repeats an anchored node: check it once
                continue
            visited.add(id(node))
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, yaml.Node] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == _MERGE_TAG:
                        children.append((value_node, where))
                        continue
                    label = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                    path = f"{where}.{label}" if where else label
                    if isinstance(key_node, yaml.ScalarNode):
                        # Compare loaded keys, as the dict will: `1`, `1.0` and `0x1` are one key.
                        key = self.construct_object(key_node)
                        if key in seen:
                            raise DuplicateKeyError(path, key, seen[key].start_mark, key_node.start_mark)
                        seen[key] = key_node
                    children.append((value_node, path))
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
            stack.extend(reversed(children))


def load_yaml(text: str, source: str | Path) -> Any:
    """Parse one YAML document with :class:`StrictSafeLoader`.

    Raises:
        DuplicateKeyError: a mapping repeats a key (``describe()`` is a one-line message without the file).
        yaml.YAMLError: anything else PyYAML refuses; its marks name ``source``.
    """
    loader = StrictSafeLoader(text, name=str(source))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------
# Config helpers
# ---------------------------------------------------------------------------


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid name to ``name`` (for 'did you mean' hints), or None."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_message(key: str, valid: Iterable[str], where: str = "") -> str:
    """An error message for an unknown key, naming where it was found and the closest valid key."""
    valid = sorted(valid)
    hint = closest(key, valid)
    loc = f"{where}: " if where else ""
    fix = f"did you mean '{hint}'?" if hint else f"valid keys: {', '.join(valid)}"
    return f"{loc}unknown key '{key}' ({fix})"


def config_from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build a config dataclass from a plain mapping.

    Unknown keys are a ``ValueError`` naming the key and suggesting the closest field;
    the dataclass's own ``__post_init__`` validates the values.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping of field: value, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise ValueError(unknown_key_message(str(key), names, where or cls.__name__))
    return cls(**dict(data))


_SCALARS = (str, int, float, bool, type(None))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able values (tuples become lists, Paths strings)."""

    def plain(value: Any) -> Any:
        if type(value) in _SCALARS:  # most values; skips the slow dataclass and Mapping (ABC) checks
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def config_hash(values: Mapping[str, Any], *extra: str) -> str:
    """A stable 16-hex-digit hash of a resolved config (plus extra strings such as a data fingerprint)."""
    blob = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode())
    for item in extra:
        digest.update(b"\0" + item.encode())
    return digest.hexdigest()[:16]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` command-line overrides; values are read as YAML (``amp=true``, ``crops=[...]``).

    A key given twice (``--set epochs=1 --set epochs=500``) is an error, as is a duplicate key
    inside a value (``crops=[{count: 2, count: 6}]``): neither is silently resolved to the later one.
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # key -> the --set that gave it, for the duplicate message
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set epochs=2")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key in given:
            raise ValueError(f"--set {pair!r}: '{key}' is already set by --set {given[key]!r}; give each field once")
        try:
            out[key] = load_yaml(raw, f"--set {key}")
        except DuplicateKeyError as exc:
            raise ValueError(f"--set {pair!r}: {exc.describe()}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {pair!r}: value is not valid YAML ({exc})") from exc
        given[key] = pair
    return out


def load_config_file(cls: type[C], path: str | Path, overrides: Sequence[str] = ()) -> C:
    """Read a YAML config file for ``cls``, apply ``key=value`` overrides, validate.

    Errors name the file: ``ValueError("pretrain.yaml: unknown key 'prototype' (did you mean 'prototypes'?)")``;
    a key written twice is one too (:class:`StrictSafeLoader`), rather than the later value silently winning.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        data = load_yaml(path.read_text(), path) or {}
    except DuplicateKeyError as exc:
        raise ValueError(f"{path}: {exc.describe()}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value at the top level")
    data.update(parse_overrides(overrides))
    try:
        return config_from_dict(cls, data, where=str(path))
    except TypeError as exc:  # e.g. a missing required field
        raise ValueError(f"{path}: {exc}") from exc
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from exc


class ConfigError(ValueError):
    """A config value that is refused; the message names the field, the value and what is allowed.

    Attributes:
        field: the field as the message names it: ``epochs``, ``crops[1].min_scale``,
            ``lr_multipliers.detector``.
        value: the refused value.
    """

    def __init__(self, message: str, field: str, value: Any) -> None:
        super().__init__(message)
        self.field, self.value = field, value

    @property
    def top_field(self) -> str:
        """The config field the error is about: ``crops`` for ``crops[1].min_scale``."""
        return re.split(r"[.\[ ]", self.field, maxsplit=1)[0]


def is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` is not an epoch count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, finite: bool = True) -> bool:
    """An int or float, not a bool; with ``finite`` neither NaN nor infinite."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (not finite or math.isfinite(value))


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Config validation: raise :class:`ConfigError` naming the field, the value and what is allowed."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is invalid: {allowed}", field, value)


def require_bool(field: str, value: Any) -> None:
    """Config validation for a switch: ``true`` or ``false`` only (not 0, 1 or "yes")."""
    require(isinstance(value, bool), field, value, "true or false")


def require_int(field: str, value: Any, minimum: int | None = None, allowed: str | None = None) -> None:
    """Config validation for an integer field, at least ``minimum`` when given.

    ``allowed`` replaces the generated ``an integer >= N`` where the message should say more.
    """
    ok = is_int(value) and (minimum is None or value >= minimum)
    default = "an integer" if minimum is None else f"an integer >= {minimum}"
    require(ok, field, value, allowed or default)


def require_number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    finite: bool = True,
    allowed: str | None = None,
) -> None:
    """Config validation for a number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    A missing bound is not checked; ``finite`` refuses NaN and infinity. The generated text reads
    ``a finite number > 0 and <= 1`` (bounds formatted as given); ``allowed`` replaces it.
    """
    ok = is_number(value, finite=finite)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    bounds = ([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + (
        [f"<= {high}"] if high is not None else [])
    default = f"a {'finite ' if finite else ''}number" + (" " + " and ".join(bounds) if bounds else "")
    require(ok, field, value, allowed or default)


def require_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    """Config validation for a field that takes one of a few names (the error suggests the closest)."""
    if value not in choices:
        hint = closest(str(value), [str(c) for c in choices]) if isinstance(value, str) else None
        extra = f" (did you mean '{hint}'?)" if hint else ""
        raise ConfigError(f"{field}={value!r} is invalid: choose one of {', '.join(map(str, choices))}{extra}",
                          field, value)


# ---------------------------------------------------------------------------
# Reproducibility and provenance
# ---------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, epoch, rank)``), independent of global RNG state."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs, as tensors and plain values (no pickles)."""
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1].numpy(), dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def git_sha() -> str:
    """The code version: ABLATE_GIT_SHA if set (e.g. in a container, or a copy of the tree without git), else ``git
    rev-parse HEAD`` of the checkout (asked once per process), else 'unknown'. A tree with no ``.git`` (a copy)
    never runs git."""
    if os.environ.get("ABLATE_GIT_SHA"):
        return os.environ["ABLATE_GIT_SHA"]
    return _checkout_sha()


@functools.lru_cache(maxsize=1)
def _checkout_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=root)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------
# Devices and mixed precision
# ---------------------------------------------------------------------------


def assigned_gpus() -> list[str]:
    """The GPU ids this process was given in ``CUDA_VISIBLE_DEVICES`` (as Ray and torchrun set it); [] when unset.

    CUDA stops reading the list at the first invalid id (``-1`` hides every GPU), and so does this.
    """
    ids = []
    for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


_warned_unusable: set[str] = set()


def default_device() -> torch.device:
    """The device a trainer runs on: CUDA device ``LOCAL_RANK`` when torch can use one, else the CPU.

    A runner that assigned GPUs (``CUDA_VISIBLE_DEVICES`` set, e.g. by Ray for ``resources.gpu``) which torch
    cannot use (a CPU-only build, no driver, a GPU that failed) gets the CPU and one warning naming the
    assignment, rather than a crash: the trial is slow but its result is real.

    Raises:
        RuntimeError: this process's rank has no GPU of its own (DDP with fewer visible GPUs than processes).
    """
    import torch

    if torch.cuda.is_available():
        rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if rank >= count:
            raise RuntimeError(f"process rank {rank} needs a GPU of its own but only {count} are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}): give each "
                               "DDP process a whole GPU (resources.gpu: 1 with resources.processes: N)")
        return torch.device("cuda", rank)
    gpus = assigned_gpus()
    key = ",".join(gpus)
    if gpus and key not in _warned_unusable:
        _warned_unusable.add(key)
        log.warning("GPU %s assigned (CUDA_VISIBLE_DEVICES) but torch %s cannot use it (CUDA build %s, "
                    "torch.cuda.is_available() is False): training on the CPU", key, torch.__version__,
                    torch.version.cuda or "none")
    return torch.device("cpu")


def device_note(device: torch.device) -> str:
    """How a run's device is recorded: ``cuda:0 (NVIDIA H200)``, ``cpu``, or ``cpu (GPU 0 assigned, unusable)``."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    gpus = assigned_gpus()
    return f"cpu (GPU {','.join(gpus)} assigned, unusable)" if gpus else "cpu"


def ddp_backend() -> str:
    """The torch.distributed backend for this process: NCCL where torch can use CUDA, else gloo."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def autocast(device: torch.device, enabled: bool) -> ContextManager[Any]:
    """Detection's mixed-precision context: float16 on CUDA (with a GradScaler), bfloat16 on CPU (no scaler needed).

    SwAV pretraining has its own (trainers/swav/precision.py): float16 with loss scaling on every
    device, since the loss scaling is what its mixed-precision ablation tests.
    """
    import torch

    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """Detection's GradScaler: active only for float16 on CUDA (bfloat16 has float32's range)."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")


def check_finite(loss: torch.Tensor, epoch: int, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch and step when ``loss`` is NaN/inf."""
    import torch

    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(f"non-finite {what} ({loss.item()}) at epoch {epoch}, step {step}")


# ---------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------


def warmup_cosine(
    iteration: int, total_iters: int, warmup_iters: int, base_lr: float, final_lr: float, start_lr: float
) -> float:
    """Linear warmup from ``start_lr`` to ``base_lr`` over ``warmup_iters``, then cosine to ``final_lr``.

    Per-iteration, as in the SwAV reference implementation.
    """
    if iteration < warmup_iters:
        return start_lr + (base_lr - start_lr) * iteration / max(1, warmup_iters)
    span = max(1, total_iters - warmup_iters)
    progress = min(1.0, (iteration - warmup_iters) / span)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))

