"""trainers/common/devices.py: what a trial given GPUs by Ray trains on, and the distributed backend."""

from __future__ import annotations

import pytest
import torch

from trainers.common import devices
from trainers.common.devices import assigned_gpus


@pytest.mark.parametrize("value, ids", [(None, []), ("", []), ("0", ["0"]), ("2, 3", ["2", "3"]), ("1,-1,2", ["1"]),
                                        ("GPU-5f1e,GPU-aa02", ["GPU-5f1e", "GPU-aa02"])])
def test_assigned_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch, value, ids) -> None:
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert assigned_gpus() == ids


def test_an_assigned_gpu_torch_cannot_use_falls_back_to_the_cpu_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_warned_unusable", set())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with caplog.at_level("WARNING", logger="trainers.common.devices"):
        assert devices.default_device() == torch.device("cpu")
        assert devices.default_device() == torch.device("cpu")
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainers.common.devices"]
    assert len(warnings) == 1 and "GPU 1 assigned" in warnings[0] and "training on the CPU" in warnings[0]
    assert devices.device_note(torch.device("cpu")) == "cpu (GPU 1 assigned, unusable)"
    assert devices.ddp_backend() == "gloo"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainers.common.devices"):
        assert devices.default_device() == torch.device("cpu")  # nothing assigned: the CPU, silently
    assert not caplog.records and devices.device_note(torch.device("cpu")) == "cpu"


def test_each_ddp_process_takes_the_gpu_of_its_rank_and_nccl(monkeypatch) -> None:
    """``resources: {processes: 4, gpu: 1}``: Ray gives the trial four GPUs, each DDP process its own."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert devices.default_device() == torch.device("cuda", rank)
    assert devices.ddp_backend() == "nccl"
    monkeypatch.setenv("LOCAL_RANK", "4")  # a fifth process on four GPUs: refused, with the fix
    with pytest.raises(RuntimeError, match=r"rank 4 needs a GPU of its own but only 4 are visible.*resources\.gpu: 1"):
        devices.default_device()
