"""The data set a run config names, loaded as its train / valid / test splits."""

from __future__ import annotations

from biva.config.run import RunConfig
from biva.data.registry import load_dataset
from biva.data.types import DatasetSplits


def load_run_data(cfg: RunConfig) -> DatasetSplits:
    """Load the dataset a run config names."""
    d = cfg.data
    seed = cfg.train.seed if d.split_seed is None else d.split_seed
    kwargs = {"root": d.root, "binarization": d.binarization, "seed": seed,
              "path": d.path, "download": d.download}
    if d.valid_size is not None:
        kwargs["valid_size"] = d.valid_size
    if d.image_size is not None:
        kwargs["image_size"] = d.image_size
    return load_dataset(d.name, **kwargs)
