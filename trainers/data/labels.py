"""Image-level class labels for supervised pretraining: a file that maps each image of a folder to its class.

Two formats, told apart by the suffix:

- ``.json``: one object, ``{"part_00/u000000.jpg": "7", ...}``;
- ``.csv``: a header row ``image,class`` and one row per image.

Image names are relative to the image folder, with ``/`` as the separator (as ``find_images`` orders them). Classes
are strings or integers; they are numbered in sorted order. The digits sample writes ``unlabeled/labels.json`` (each
object-centric image's digit), the default a ``method: supervised`` pretraining run reads. No torch here: a launch
checks the file while it plans.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from trainers.data.errors import DatasetError

LABELS_FILE = "labels.json"  # the default, inside the image folder (the digits sample writes it there)
FORMAT_HINT = 'a JSON object {"image path relative to the folder": class} or a CSV file with the header image,class'


def read_label_file(file: str | Path) -> dict[str, str]:
    """``{relative image name: class}`` from a labels file (see the module docstring).

    Raises:
        DatasetError: naming the file, the entry and the fix, when it is missing or malformed.
    """
    file = Path(file)
    if not file.is_file():
        raise DatasetError(f"labels file {file} does not exist; set pretrain.labels to {FORMAT_HINT}")
    text = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}); write {FORMAT_HINT}") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{file}: holds a {type(value).__name__}, not an object; write {FORMAT_HINT}")
        for name, label in value.items():
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise DatasetError(f"{file}: {name!r}: class {label!r} is invalid; a string or an integer")
        return {str(k).replace("\\", "/"): str(v) for k, v in value.items()}
    if file.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "class"]:
            raise DatasetError(f"{file}: the first row must be the header image,class; write {FORMAT_HINT}")
        out: dict[str, str] = {}
        for number, row in enumerate(rows[1:], start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetError(f"{file}: row {number} ({','.join(row)!r}) is invalid; each row is image,class")
            out[row[0].strip().replace("\\", "/")] = row[1].strip()
        return out
    raise DatasetError(f"labels file {file}: unknown format {file.suffix!r}; write {FORMAT_HINT}")


def image_labels(file: str | Path, root: str | Path, paths: Sequence[Path]) -> tuple[list[int], list[str]]:
    """Each of ``paths`` (images under ``root``) numbered by its class, and the classes in that numbering.

    Raises:
        DatasetError: when an image has no label (the first few are named), or there are fewer than two classes.
    """
    mapping = read_label_file(file)
    root = Path(root)
    names = [p.relative_to(root).as_posix() for p in paths]
    missing = [n for n in names if n not in mapping]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(f"{file}: {len(missing)} of the {len(names)} images in {root} have no class ({shown}); "
                           "add a row for each image, or remove the images from the folder")
    classes = sorted({mapping[n] for n in names}, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    if len(classes) < 2:
        raise DatasetError(f"{file}: the images of {root} hold {len(classes)} class(es); supervised pretraining "
                           "needs at least 2")
    number = {c: i for i, c in enumerate(classes)}
    return [number[mapping[n]] for n in names], classes


def write_labels(folder: Path, labels: dict[str, str]) -> Path:
    """Write ``folder/labels.json`` (the format :func:`read_label_file` reads)."""
    path = folder / LABELS_FILE
    path.write_text(json.dumps(dict(sorted(labels.items())), indent=0) + "\n")
    return path


__all__ = ["FORMAT_HINT", "LABELS_FILE", "image_labels", "read_label_file", "write_labels"]
