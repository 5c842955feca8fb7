"""experiments/results/pyfunc_models/backbone.py: the registered SwAV backbone as an MLflow pyfunc model, loaded
straight from an exported backbone folder: pooled float32 embeddings, one row per image, and its refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.results.pyfunc_models.backbone import ARTIFACT_KEY, BackboneModel
from experiments.results.registry import encode_image, example_image
from trainers.checkpoints import export_backbone
from trainers.resnet import build_trunk


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> BackboneModel:
    """A random resnet18 trunk exported as ``export_backbone`` writes it, loaded as the pyfunc model loads it."""
    torch.manual_seed(0)
    folder = export_backbone(tmp_path_factory.mktemp("backbone") / "bb", build_trunk("resnet18", "bn").state_dict(),
                             {"arch": "resnet18", "norm": "bn"})
    model = BackboneModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(folder)}))
    return model


def _frame(*images: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": [encode_image(i) for i in images]})


def test_one_embedding_per_image(backbone: BackboneModel) -> None:
    card = example_image()
    out = backbone.predict(None, _frame(card, card[::-1].copy(), card), params={"image_size": 64})
    assert out.shape == (3, 512) and out.dtype == np.float32 and np.isfinite(out).all()  # resnet18's pooled width
    assert np.array_equal(out[0], out[2]) and not np.allclose(out[0], out[1])
    # any input size: each image is resized to image_size first
    small = backbone.predict(None, _frame(example_image(40, 50)), params={"image_size": 64})
    assert small.shape == (1, 512)


def test_an_empty_frame_gives_no_rows_of_the_trunks_width(backbone: BackboneModel) -> None:
    out = backbone.predict(None, pd.DataFrame({"image": []}))
    assert out.shape == (0, 512) and out.dtype == np.float32


def test_bad_input_is_refused(backbone: BackboneModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size=16 is invalid: at least 32"):
        backbone.predict(None, _frame(example_image()), params={"image_size": 16})
    with pytest.raises(ValueError, match="expected a DataFrame with a column 'image'"):
        backbone.predict(None, pd.DataFrame({"img": ["x"]}))
