"""Packages whose public names load on first use (PEP 562), so that importing one light name never loads torch.

``ablate status``, ``report``, ``models``, ``pull`` and ``launch --dry-run`` read configs, records and
stored metrics; a package ``__init__`` that imported every module up front made each of them load torch
and torchvision (~4 s). A package lists its names here instead: ``from trainers.swav import SwAVConfig``
loads ``trainers.swav.config`` only, and ``trainers.swav.train`` loads the engine when it is first used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: each name of ``exports`` (name -> its module) is imported
    from its module when first asked for, then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
