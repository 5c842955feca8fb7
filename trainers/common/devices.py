"""The device a trainer's process runs on (the GPU its runner assigned, else the CPU, said once), how a run
records it, and the distributed backend that goes with it."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads inside the functions that use it
    import torch

log = logging.getLogger(__name__)

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
