"""Images: decoding (files and base64), finding them in a folder, and the unlabeled folder that
SwAV pretrains on, with the images it skips (unreadable, or smaller than the smallest crop).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from trainers.common.validation import require_int
from trainers.data.errors import SAMPLE_HINT, DatasetError
from trainers.data.files import IMAGE_EXTENSIONS, find_images, group_renderings  # noqa: F401 - importable here too

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------
# Decoding and finding images
# ---------------------------------------------------------------------------


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor of shape 3xHxW.

    torchvision's native decoder is tried first (several times faster than PIL on JPEG);
    PIL is the fallback for what it cannot read (e.g. palette PNGs with odd modes, 16-bit PNGs).

    Raises:
        OSError or RuntimeError (from the decoders) when neither can read the file.
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        # torchvision 0.29 warns on every call that its decoders move to torchcodec (not a
        # dependency here); the decoders still work, and one warning per image would drown real ones.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            return image
    except (RuntimeError, ValueError, OSError):
        pass  # fall back to PIL below
    with Image.open(path) as pil:
        rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_base64_image(value: Any, row: int = 0) -> torch.Tensor:
    """A base64-encoded PNG/JPEG (the served models' input) as a uint8 3xHxW RGB tensor.

    Raises:
        ValueError: naming the row when the value is not base64 text of an image.
    """
    if not isinstance(value, str):
        raise ValueError(f"image row {row}: expected base64 text of a PNG/JPEG file, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image row {row}: not base64 of a PNG/JPEG file ({exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------
# Unlabeled images (SwAV pretraining)
# ---------------------------------------------------------------------------


UNREADABLE = "unreadable"  # SkippedImage.reason: no decoder can read the file
TOO_SMALL = "too small"  # SkippedImage.reason: a side is shorter than the smallest crop
SKIPPED_SHOWN = 5  # files named in a warning or error; the rest are counted


@dataclass(frozen=True)
class SkippedImage:
    """A file of the unlabeled folder that is not trained on, and why.

    Attributes:
        path: the file, or None when the data set gave only ``None`` (it does not name its files).
        reason: :data:`UNREADABLE` or :data:`TOO_SMALL`.
        detail: the decoder's message, or the image size (``"1x1 px"``).
    """

    path: Path | None
    reason: str
    detail: str = ""


class UnlabeledImages(Dataset):
    """A folder of images, searched recursively, each decoded once to a uint8 RGB tensor.

    Unreadable files, and images with a side shorter than ``min_size`` (a multi-crop view
    would be upsampled from a few pixels: noise, not data), do not stop a multi-hour
    pretraining run: ``__getitem__`` returns ``None`` for them (or a :class:`SkippedImage`
    naming the file and the reason, with ``mark_skipped=True``), ``collate_images`` drops and
    lists them and the trainer logs one warning per epoch with ``warn_skipped``.

    Args:
        root: the image folder.
        min_size: the shortest side, in pixels, of an image that is trained on (the trainer
            passes its smallest crop size).
        mark_skipped: return a :class:`SkippedImage` instead of ``None`` for a skipped file.

    Raises:
        DatasetError: when ``root`` does not exist, is not a folder or holds no images.
        ValueError: when ``min_size`` is not an integer >= 1.
    """

    def __init__(self, root: str | Path, min_size: int = 1, mark_skipped: bool = False) -> None:
        require_int("min_size", min_size, 1, "an integer >= 1 (pixels)")
        self.root = Path(root)
        self.min_size = min_size
        self.mark_skipped = mark_skipped
        if not self.root.exists():
            raise DatasetError(
                f"unlabeled image folder {self.root} does not exist; point the config at a folder of "
                f".jpg/.png images, or {SAMPLE_HINT}"
            )
        if not self.root.is_dir():
            raise DatasetError(f"unlabeled image folder {self.root} is a file, not a folder; point it at the folder")
        # an image's further renderings (files.RENDERING) travel with it: one item, one entry of the epoch
        self.paths, self.renderings = group_renderings(find_images(self.root))
        if not self.paths:
            raise DatasetError(
                f"unlabeled image folder {self.root} holds no .jpg/.jpeg/.png images (searched recursively); "
                f"add images, or {SAMPLE_HINT}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor | tuple[torch.Tensor, ...] | SkippedImage:
        """The image as uint8 3xHxW RGB (a tuple of them, the image first, when it has further renderings), or why
        it is skipped (unreadable, under ``min_size``, or a rendering of another size than its image)."""
        path = self.paths[index]
        images = []
        for file in (path, *self.renderings.get(path, ())):
            try:
                image = decode_rgb(file)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file", never crash a worker
                # Per-file detail at debug level only; the trainer logs one summary warning per epoch.
                logger.debug("cannot decode %s: %s", file, exc)
                return SkippedImage(file, UNREADABLE, str(exc))
            height, width = image.shape[1:]
            if min(height, width) < self.min_size:
                logger.debug("%s is %dx%d px, under min_size=%d", file, width, height, self.min_size)
                return SkippedImage(file, TOO_SMALL, f"{width}x{height} px")
            if images and image.shape != images[0].shape:
                return SkippedImage(file, UNREADABLE, f"a rendering of {path.name} in another size "
                                    f"({width}x{height} px, the image {images[0].shape[2]}x{images[0].shape[1]} px)")
            images.append(image)
        return images[0] if len(images) == 1 else tuple(images)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, ...] | SkippedImage | None:
        """The image as uint8 3xHxW RGB (or its renderings, a tuple); for a skipped file None, or a SkippedImage
        with ``mark_skipped``."""
        item = self.load(index)
        if isinstance(item, SkippedImage) and not self.mark_skipped:
            return None
        return item


def collate_images(
    batch: Sequence[torch.Tensor | SkippedImage | None],
) -> tuple[list[torch.Tensor], tuple[SkippedImage, ...]]:
    """Collate for ``UnlabeledImages``: drop the skipped entries (None or SkippedImage).

    Returns:
        The images (a list, since multi-crop resizes them later and sizes may differ; an image with renderings
        is a tuple of them) and the
        skipped entries; a ``None`` becomes an unnamed unreadable :class:`SkippedImage`.
    """
    images = [item for item in batch if isinstance(item, (torch.Tensor, tuple))]
    skipped = tuple(
        item if isinstance(item, SkippedImage) else SkippedImage(None, UNREADABLE)
        for item in batch
        if not isinstance(item, (torch.Tensor, tuple))
    )
    return images, skipped


def describe_skipped(skipped: Sequence[SkippedImage], root: str | Path, total: int | None = None) -> str:
    """``'a.jpg (unreadable), b.png (1x1 px), ... (12 in all)'``: a few named files and the count.

    Paths are shown relative to ``root``; unnamed entries are only counted.
    """
    total = len(skipped) if total is None else total
    named = [item for item in skipped if item.path is not None]
    shown = []
    for item in named[:SKIPPED_SHOWN]:
        try:
            name = item.path.relative_to(root).as_posix()  # type: ignore[union-attr]
        except ValueError:
            name = str(item.path)
        shown.append(f"{name} ({item.detail})" if item.reason == TOO_SMALL else f"{name} ({UNREADABLE})")
    text = ", ".join(shown)
    if total > len(shown):
        text += f", ... ({total} in all)" if shown else f"{total} unnamed"
    return text


def warn_skipped(
    count: int,
    root: str | Path,
    too_small: int = 0,
    examples: Sequence[SkippedImage] = (),
    min_size: int | None = None,
) -> None:
    """Log one warning naming the folder, how many files were skipped and a few of them.

    Does nothing when nothing was skipped, so a trainer can call it unconditionally at epoch end.

    Args:
        count: unreadable files.
        root: the image folder.
        too_small: images with a side under ``min_size``.
        examples: some of the skipped files (named in the warning).
        min_size: the smallest crop size, for the message.
    """
    if count <= 0 and too_small <= 0:
        return
    parts = []
    fixes = []
    if count > 0:
        parts.append(f"{count} unreadable image{'' if count == 1 else 's'} (corrupt or not an image)")
        fixes.append("remove or re-encode the unreadable ones")
    if too_small > 0:
        under = f" ({min_size} px)" if min_size is not None else ""
        parts.append(f"{too_small} image{'' if too_small == 1 else 's'} smaller than the smallest crop{under}")
        fixes.append("remove the small ones or lower the crop sizes")
    named = describe_skipped(examples, root, count + too_small) if examples else ""
    logger.warning(
        "skipped %s in %s%s; %s",
        " and ".join(parts),
        root,
        f": {named}" if named else "",
        ", ".join(fixes),
    )
