"""Data for both trainers: the unlabeled image folder, the COCO detection data set and the
deterministic sample-data generator behind ``ablate data sample``.

Formats (docs/ARCHITECTURE.md): unlabeled = a folder of .jpg/.png images searched recursively;
labeled = COCO instances JSON + an image folder, one pair for train and one for val.

Everything a user points us at is validated when it is opened, and errors name the file,
the entry and a fix, so a bad data set fails before hours of pretraining rather than in them.

Public names live here; the package splits them by concern: ``errors`` (:class:`DatasetError`),
``images`` (decoding, finding images, the unlabeled folder and its skipped files), ``coco``
(the COCO detection set, its validation, the flip), ``fingerprint`` (:func:`data_fingerprint`)
and ``samples`` (the sample data set's layout and generator).
"""

from trainers.data.coco import (
    BOX_TOLERANCE,
    EMPTY_BOX,
    THIN_BOX,
    CocoDetection,
    detection_collate,
    hflip,
)
from trainers.data.errors import SAMPLE_HINT, DatasetError
from trainers.data.fingerprint import data_fingerprint
from trainers.data.images import (
    IMAGE_EXTENSIONS,
    SKIPPED_SHOWN,
    TOO_SMALL,
    UNREADABLE,
    SkippedImage,
    UnlabeledImages,
    collate_images,
    decode_base64_image,
    decode_rgb,
    describe_skipped,
    find_images,
    warn_skipped,
)
from trainers.data.samples import (
    AREA_RANGES,
    IMAGE_SIZE,
    JPEG_QUALITY,
    MAX_OBJECTS,
    PNG_EVERY,
    SAMPLE_CATEGORIES,
    SAMPLE_KINDS,
    SAMPLE_SIZES,
    SAMPLE_VERSION,
    TRIANGLE_ASPECT,
    UNLABELED_PER_FOLDER,
    SamplePaths,
    generate_sample,
    sample_paths,
    sample_sizes,
)

__all__ = [
    "AREA_RANGES",
    "BOX_TOLERANCE",
    "EMPTY_BOX",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "JPEG_QUALITY",
    "MAX_OBJECTS",
    "PNG_EVERY",
    "SAMPLE_CATEGORIES",
    "SAMPLE_HINT",
    "SAMPLE_KINDS",
    "SAMPLE_SIZES",
    "SAMPLE_VERSION",
    "SKIPPED_SHOWN",
    "THIN_BOX",
    "TOO_SMALL",
    "TRIANGLE_ASPECT",
    "UNLABELED_PER_FOLDER",
    "UNREADABLE",
    "CocoDetection",
    "DatasetError",
    "SamplePaths",
    "SkippedImage",
    "UnlabeledImages",
    "collate_images",
    "data_fingerprint",
    "decode_base64_image",
    "decode_rgb",
    "describe_skipped",
    "detection_collate",
    "find_images",
    "generate_sample",
    "hflip",
    "sample_paths",
    "sample_sizes",
    "warn_skipped",
]
