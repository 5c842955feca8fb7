"""Tests for trainers.stages: each stage's trainer comes from its record or from ``ABLATE_TRAINER_<STAGE>``, and a
TrainerRef imports the trainer's ``train`` and config class only when asked."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import stages
from trainers.stages import TRAINERS, TrainerRef
from trainers.vocabulary import STAGE_RECORDS

STANDIN = '''
class StandInConfig:
    pass


def train(config, reporter):
    return {"det/AP50": 0.5}
'''


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A trainer module of one's own, importable as ``standin_trainer``."""
    (tmp_path / "standin_trainer.py").write_text(STANDIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "standin_trainer", raising=False)
    yield "standin_trainer"
    sys.modules.pop("standin_trainer", None)


def test_each_stage_has_the_trainer_its_record_names() -> None:
    assert set(TRAINERS) == set(STAGE_RECORDS) == {"pretrain", "finetune"}
    for stage, record in STAGE_RECORDS.items():
        assert TRAINERS[stage] == TrainerRef(*record.trainer.split(":"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        TRAINERS["pretrain"].module = "elsewhere"  # type: ignore[misc]


def test_the_config_classes_load_without_torch() -> None:
    code = ("import sys\nfrom trainers.stages import TRAINERS\n"
            "print([TRAINERS[s].config_class().__name__ for s in sorted(TRAINERS)], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['DetectionConfig', 'SwAVConfig'] False"


def test_an_environment_variable_names_a_trainer_of_ones_own(standin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_TRAINER_FINETUNE", standin)
    ref = stages._trainer_ref("finetune")
    assert ref == TrainerRef(standin, "DetectionConfig")  # the record's config class name stays
    monkeypatch.delenv("ABLATE_TRAINER_FINETUNE")
    assert stages._trainer_ref("finetune") == TRAINERS["finetune"]

    own = TrainerRef(standin, "StandInConfig")
    train, config = own.load()
    module = sys.modules[standin]
    assert (train, config) == (module.train, module.StandInConfig) and own.config_class() is config
    assert train(config(), None) == {"det/AP50": 0.5}


def test_a_trainer_without_its_config_class_or_module_fails_on_load(standin: str) -> None:
    with pytest.raises(AttributeError, match="DetectionConfig"):
        TrainerRef(standin, "DetectionConfig").load()
    with pytest.raises(ModuleNotFoundError, match="no_such_trainer"):
        TrainerRef("no_such_trainer", "Config").config_class()
