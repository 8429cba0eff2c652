"""Dataset layer: loaders for the BIVA benchmarks and a user's own folders or .npz files,
checksums, downloads and batching, and the data set a run config names (``load_run_data``).

``load_dataset(name, ...)`` returns a ``DatasetSplits`` (train / valid / test ``ImageSplit``s
plus the likelihood ``kind``); ``epoch_batches`` iterates an epoch deterministically from
(seed, epoch) so runs resume exactly; ``to_model_input`` maps batches to model floats.
"""

from biva.data.batches import (
    bernoulli_draw,
    epoch_batches,
    epoch_order,
    evaluation_split,
    fixed_binarization,
    num_batches,
    to_model_input,
)
from biva.data.checksums import KNOWN_FILES, sha256_file, verify_file
from biva.data.download import download, fetch_url
from biva.data.errors import DatasetError
from biva.data.folders import fit_to_shape, image_files, read_folder
from biva.data.labels import balanced_label_split
from biva.data.paths import DEFAULT_CACHE_DIR, ENV_VAR, resolve_data_root
from biva.data.registry import DATASET_NAMES, DOWNLOADABLE, load_dataset
from biva.data.run_data import load_run_data
from biva.data.types import DatasetSplits, ImageSplit

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
    "download",
    "epoch_batches",
    "epoch_order",
    "evaluation_split",
    "fetch_url",
    "fit_to_shape",
    "fixed_binarization",
    "image_files",
    "load_dataset",
    "load_run_data",
    "num_batches",
    "read_folder",
    "resolve_data_root",
    "sha256_file",
    "to_model_input",
    "verify_file",
]
