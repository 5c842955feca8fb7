"""The registered SwAV backbone as an MLflow pyfunc model (a "model from code" file).

MLflow copies this file into the logged model and runs it at load time; the weights are the
model's artifact ``backbone`` — a folder with ``backbone.safetensors`` (torchvision ResNet key
names) and ``backbone.json`` (arch, norm, sha256) as ``trainers.checkpoints.export_backbone``
writes them — loaded by ``trainers.swav.load_backbone``; nothing is unpickled.

Input: a pandas DataFrame with one column ``image``, each value the base64 text of an encoded
image file (PNG or JPEG, converted to RGB). Each image is resized to ``image_size`` x
``image_size`` (param, default 224: the size of SwAV's global crops) and normalised with the
ImageNet mean and std, as in pretraining.

Served like the detector (``mlflow models serve -m models:/STUDY-backbone@champion``), with the
optional param ``image_size``.

Output: a float32 array of shape (images, D): the trunk's globally average-pooled features
(D = 512 for resnet18/34, 2048 for resnet50), before SwAV's projection head — the representation
a detector fine-tunes.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from trainers.data import decode_base64_image  # shipped with the model as code

IMAGE_COLUMN = "image"
ARTIFACT_KEY = "backbone"
DEFAULT_IMAGE_SIZE = 224  # SwAV's global crop size


class BackboneModel(mlflow.pyfunc.PythonModel):
    """A ResNet trunk (``fc = Identity``) rebuilt from the ``backbone`` artifact folder."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Build the trunk for the recorded arch/norm and load the weights (sha256 checked, strict)."""
        from trainers.checkpoints import read_backbone_config
        from trainers.resnet import TRUNK_CHANNELS
        from trainers.swav import IMAGENET_MEAN, IMAGENET_STD, load_backbone

        folder = context.artifacts[ARTIFACT_KEY]
        self.trunk = load_backbone(folder).eval()  # sha256 checked, strict load
        self.width = TRUNK_CHANNELS[str(read_backbone_config(folder)["arch"])]
        # Pretraining's normalisation, so the trunk sees inputs distributed as in training.
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Embeddings (images x D, float32) for every image of ``model_input``."""
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a column {IMAGE_COLUMN!r} of base64 PNG/JPEG text")
        size = int((params or {}).get("image_size", DEFAULT_IMAGE_SIZE) or DEFAULT_IMAGE_SIZE)
        if size < 32:
            raise ValueError(f"image_size={size} is invalid: at least 32 (the trunk downsamples 32x)")
        batch = []
        for index, value in enumerate(model_input[IMAGE_COLUMN].tolist()):
            image = decode_base64_image(value, index).unsqueeze(0)
            batch.append(F.interpolate(image.float(), size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False).div_(255.0))
        if not batch:
            return np.zeros((0, self.width), dtype=np.float32)
        x = (torch.cat(batch) - self.mean) / self.std
        with torch.no_grad():
            return self.trunk(x).float().numpy()


mlflow.models.set_model(BackboneModel())
