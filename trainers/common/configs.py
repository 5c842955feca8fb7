"""Config files and config dataclasses: YAML that refuses a key written twice, ``key=value`` overrides, and a
config dataclass built from, turned back into, and hashed as plain values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from trainers.common.validation import unknown_key_message

C = TypeVar("C")

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
