"""Data specs (`SOURCE[:split]`) -> lazy splits: streamed photos or in-memory arrays, splits and fingerprints."""

from ladle.data.formats import FORMATS
from ladle.data.load import DIGITS_SPLIT, SPLITS, load_data, open_data, parse_spec, resize, stratified_split
from ladle.data.preprocess import Preprocess
from ladle.data.sets import ImageSet, fingerprint, unit
from ladle.data.stream import StreamSet

__all__ = ["DIGITS_SPLIT", "FORMATS", "SPLITS", "ImageSet", "Preprocess", "StreamSet", "fingerprint", "load_data",
           "open_data", "parse_spec", "resize", "stratified_split", "unit"]
