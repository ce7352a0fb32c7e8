"""Data specs (`SOURCE[:split]`) -> decoded image tensors, splits and fingerprints."""

from ladle.data.load import (DIGITS_SPLIT, SPLITS, ImageSet, fingerprint, load_data, parse_spec, resize,
                             stratified_split)

__all__ = ["DIGITS_SPLIT", "SPLITS", "ImageSet", "fingerprint", "load_data", "parse_spec", "resize", "stratified_split"]
