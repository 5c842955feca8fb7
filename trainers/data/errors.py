"""What every data set on disk shares: the error type and the hint that points at the sample data."""

from __future__ import annotations

SAMPLE_HINT = "run `ablate data sample --out DIR` to write a small sample data set"


class DatasetError(ValueError):
    """A data set on disk is missing, empty or malformed; the message names the file and a fix."""
