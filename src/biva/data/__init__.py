"""Dataset layer: loaders for the BIVA benchmarks, checksums, downloads and batching.

``load_dataset(name, ...)`` returns a ``DatasetSplits`` (train / valid / test ``ImageSplit``s
plus the likelihood ``kind``); ``epoch_batches`` iterates an epoch deterministically from
(seed, epoch) so runs resume exactly; ``to_model_input`` maps batches to model floats.
"""

from .batches import (
    bernoulli_draw,
    epoch_batches,
    epoch_order,
    fixed_binarization,
    num_batches,
    to_model_input,
)
from .checksums import KNOWN_FILES, clear_checksum_cache, sha256_file, verify_file
from .download import download, fetch_url
from .errors import DatasetError
from .labels import balanced_label_split
from .paths import DEFAULT_CACHE_DIR, ENV_VAR, resolve_data_root
from .registry import DATASET_NAMES, DOWNLOADABLE, load_dataset
from .types import DatasetSplits, ImageSplit

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_CACHE_DIR",
    "DOWNLOADABLE",
    "ENV_VAR",
    "KNOWN_FILES",
    "DatasetError",
    "DatasetSplits",
    "ImageSplit",
    "balanced_label_split",
    "bernoulli_draw",
    "clear_checksum_cache",
    "download",
    "epoch_batches",
    "epoch_order",
    "fetch_url",
    "fixed_binarization",
    "load_dataset",
    "num_batches",
    "resolve_data_root",
    "sha256_file",
    "to_model_input",
    "verify_file",
]
