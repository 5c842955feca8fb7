"""Data for both trainers: the unlabeled image folder, the COCO detection data set and the
deterministic sample-data generator behind ``ablate data sample``.

Formats (docs/ARCHITECTURE.md): unlabeled = a folder of .jpg/.png images searched recursively;
labeled = COCO instances JSON + an image folder, one pair for train and one for val.

Everything a user points us at is validated when it is opened, and errors name the file,
the entry and a fix, so a bad data set fails before hours of pretraining rather than in them.

Public names live here; the package splits them by concern: ``errors`` (:class:`DatasetError`),
``files`` (finding images, no torch), ``images`` (decoding, the unlabeled folder and its skipped files), ``coco``
(the COCO detection set, its validation, the flip), ``fingerprint`` (:func:`data_fingerprint`)
and ``samples`` (the sample data set's layout and generator).
"""

from trainers.lazy import lazy_exports

# name -> the module it lives in: imported on first use (trainers/lazy.py), so a light name never loads torch
_EXPORTS = {
    **dict.fromkeys([
        "BOX_TOLERANCE", "EMPTY_BOX", "THIN_BOX", "CocoDetection", "detection_collate", "hflip"
    ], "trainers.data.coco"),
    **dict.fromkeys(["SAMPLE_HINT", "DatasetError"], "trainers.data.errors"),
    **dict.fromkeys(["data_fingerprint"], "trainers.data.fingerprint"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "find_images"], "trainers.data.files"),
    **dict.fromkeys([
        "SKIPPED_SHOWN", "TOO_SMALL", "UNREADABLE", "SkippedImage", "UnlabeledImages",
        "collate_images", "decode_base64_image", "decode_rgb", "describe_skipped", "warn_skipped"
    ], "trainers.data.images"),
    **dict.fromkeys([
        "AREA_RANGES", "IMAGE_SIZE", "JPEG_QUALITY", "MAX_OBJECTS", "PNG_EVERY", "SAMPLE_CATEGORIES",
        "SAMPLE_KINDS", "SAMPLE_SIZES", "SAMPLE_VERSION", "TRIANGLE_ASPECT", "UNLABELED_PER_FOLDER", "SamplePaths",
        "generate_sample", "sample_paths", "sample_sizes"
    ], "trainers.data.samples"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
