"""biva: deep hierarchical VAEs in PyTorch.

The BIVA family (BIVA and its ablations LVAE+, LVAE and a plain hierarchical VAE) from one
hierarchy, the VDVAE- and NVAE-style top-down hierarchies, a semi-supervised BIVA, importance-
weighted bounds L_K and L^{>k}_K, an out-of-distribution detector and pretrained models.

What a user reaches for first is here: the model classes and their config, ``build_model`` and
``load_trained`` for run directories, ``evaluate_run``, ``OODDetector`` and ``pretrained``.
The packages, from the bottom layer up: ``utils``, ``nn``, ``likelihoods``, ``config``,
``data``, ``models``, ``objectives``, ``training`` and ``evaluation``, ``runs``, ``ood``,
``experiments`` and ``pretrained``, ``cli`` (docs: Architecture).
"""

from importlib.metadata import PackageNotFoundError, version

from biva import pretrained
from biva.config import ConfigError, DataKind, ModelConfig, RunConfig, load_run_config, preset
from biva.config.presets import PRESETS
from biva.models import (
    HierarchicalVAE,
    HierarchyOutput,
    LatentHierarchy,
    LinearGaussianHierarchy,
    SemiSupervisedBIVA,
    TopDownVAE,
    build_hierarchy,
)
from biva.objectives import bits_per_dim, importance_weighted_bound
from biva.ood.detector import OODDetector
from biva.runs.evaluate import EvalSettings, evaluate_run
from biva.runs.loading import build_model, load_trained

try:
    __version__ = version("biva")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["ConfigError", "DataKind", "EvalSettings", "HierarchicalVAE", "HierarchyOutput",
           "LatentHierarchy", "LinearGaussianHierarchy", "ModelConfig", "OODDetector",
           "PRESETS", "RunConfig", "SemiSupervisedBIVA", "TopDownVAE", "__version__",
           "bits_per_dim", "build_hierarchy", "build_model", "evaluate_run",
           "importance_weighted_bound", "load_run_config", "load_trained", "preset",
           "pretrained"]
