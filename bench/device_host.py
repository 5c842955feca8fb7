"""The GPU machine's side of ``python -m bench device``: what must hold before a phase starts, and what a phase
leaves behind.

:func:`preflight` names in one line what the plan needs and the machine lacks (pycocotools, CUDA, room for the
runs' files); :func:`work_root` is where the runs keep their checkpoints (``/dev/shm`` when it has room); each
phase runs in a process group of its own that dies with the driver (:func:`die_with_parent`), and the driver
removes what a phase added there (:func:`remove_new_entries`), however the phase ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

RAM_DIR = Path("/dev/shm")
# bytes free for /dev/shm to hold the runs' checkpoints and temporary files: twelve fine-tunes at once peaked near 8 GiB
# there (a container's default 64 MB holds none); below it the runs use the temporary folder on disk
RAM_NEEDED = 10 << 30
# What the phases (their TMPDIR is work_root()) leave there: the driver removes the new ones after each phase, however
# it ended (a phase killed at its time box runs no clean-up of its own)
OWN_PREFIXES = ("ablate-", "bench-", "tmp", "pymp-", "sem.loky", "torch_", "__KMP_REGISTERED_LIB")


def work_root() -> Path:
    """Where runs keep their checkpoints: RAM (``/dev/shm``) when it has room, else the temp folder."""
    with contextlib.suppress(OSError):  # an unreadable /dev/shm: the temporary folder
        if RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK) and shutil.disk_usage(RAM_DIR).free >= RAM_NEEDED:
            return RAM_DIR
    return Path(tempfile.gettempdir())


def preflight(tiny: bool, phases: Sequence[str]) -> str | None:
    """What the plan needs and this machine lacks, as one line naming the fix; None when nothing is missing."""
    try:
        import pycocotools.mask  # noqa: F401 - the compiled part the COCO evaluation needs
        has_coco = True
    except ImportError:
        has_coco = False
    if not has_coco and {"tests", "fidelity"} & set(phases):
        return ("pycocotools is not installed (the detector's COCO evaluation: the CUDA tests and the fidelity "
                "fine-tunes need it): run `make device-bundle` on a machine with package access, carry device-bundle/, "
                "and `pip install --no-index device-bundle/*.whl` before this command")
    if tiny:
        return None
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device (torch.cuda.is_available() is False, torch " + torch.__version__ + "): run this on the "
                "GPU machine, or `python -m bench device --tiny` to check the pipeline on a CPU")
    try:
        free = shutil.disk_usage(RAM_DIR).free if RAM_DIR.is_dir() else 0
        tmp_free = shutil.disk_usage(tempfile.gettempdir()).free
    except OSError:
        free, tmp_free = 0, 0
    if free < RAM_NEEDED and tmp_free < RAM_NEEDED:
        return (f"{RAM_DIR} has {free / 2**30:.1f} GiB free and {tempfile.gettempdir()} {tmp_free / 2**30:.1f} GiB; "
                f"the plan's twelve concurrent runs need {RAM_NEEDED / 2**30:.0f} GiB in one of them: free space, or "
                "point TMPDIR at a disk with room")
    return None


def own_entries(folder: Path) -> set[str]:
    """The entries of ``folder`` that look like ours (:data:`OWN_PREFIXES`)."""
    try:
        return {name for name in os.listdir(folder) if name.startswith(OWN_PREFIXES)}
    except OSError:
        return set()


def remove_new_entries(folder: Path, before: set[str]) -> list[str]:
    """Delete what a phase added to ``folder`` (ours by prefix, absent before it ran); the names removed."""
    removed = sorted(own_entries(folder) - before)
    for name in removed:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return removed


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


LIBC = _libc()  # loaded here, not in the forked child (no import or lock there)


def die_with_parent() -> None:
    """In a phase's process, before it runs: the kernel stops it when the driver dies (a driver killed by its
    caller's time limit must not leave a phase running); and it leads a process group of its own (the time box
    stops the phase's workers with it)."""
    os.setsid()
    if LIBC is not None:
        LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
