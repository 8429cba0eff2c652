"""Configuration: what a model and a run are, as validated dataclasses.

- :mod:`~biva.config.model`: ``ModelConfig``, the fields every model has, and one dataclass a
  family: ``HierarchyConfig`` (VAE, LVAE, LVAE+, BIVA) and ``TopDownConfig`` (the VDVAE- and
  NVAE-style hierarchies); ``model_config`` and ``as_variant`` pick the family by
  ``variant``; ``parse_spec``.
- :mod:`~biva.config.presets`: named model configurations (``preset("binary")``) and the
  top-down equivalent of a BIVA hierarchy.
- :mod:`~biva.config.run`: ``RunConfig`` (model + data + train + eval sections), read from a
  shipped config name or a YAML/JSON file with ``KEY=VALUE`` overrides.
- :mod:`~biva.config.kinds`: ``DataKind``, the image kind a data set holds, with its
  likelihood and bit depth.

Nothing here imports torch: a config can be read, checked and printed without building a model.
"""

from biva.config.kinds import DataKind
from biva.config.model import (
    BIVA_FAMILY_VARIANTS,
    LIKELIHOODS,
    TOPDOWN_VARIANTS,
    VARIANTS,
    HierarchyConfig,
    ModelConfig,
    TopDownConfig,
    as_variant,
    model_config,
    parse_spec,
)
from biva.config.presets import PRESETS, preset, topdown_equivalent
from biva.config.run import (
    BUDGET_FIELDS,
    RENAMED_FIELDS,
    DataConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
    extend_budget,
    load_run_config,
    read_run_config,
    resolve_config,
    shipped_configs,
)
from biva.utils.config_io import ConfigError

__all__ = ["BIVA_FAMILY_VARIANTS", "BUDGET_FIELDS", "RENAMED_FIELDS", "ConfigError",
           "DataConfig",
           "DataKind", "EvalConfig", "HierarchyConfig", "LIKELIHOODS", "ModelConfig", "PRESETS",
           "RunConfig", "TOPDOWN_VARIANTS", "TopDownConfig", "TrainConfig", "VARIANTS",
           "as_variant", "extend_budget", "load_run_config", "model_config", "parse_spec",
           "preset", "read_run_config", "resolve_config", "shipped_configs",
           "topdown_equivalent"]
