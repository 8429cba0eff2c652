"""Utilities with no model in them: atomic writes and plain JSON, config files and overrides,
safe checkpoints, file digests, run-directory locks, RNG state and seeds, metric logs (JSON
lines), image grids, progress bars, devices, deprecation warnings, SIGTERM as an exception
in the commands (``signals``), the machine a figure was measured on (``machine``) and paired
differences with their interval (``paired``)."""

from biva.utils.atomic import (
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
)
from biva.utils.checkpoint import (
    CheckpointError,
    checkpoint_path,
    flatten_state_dict,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    unflatten_state_dict,
)
from biva.utils.config_io import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    load_config_file,
    parse_override_value,
    save_config,
    to_dict,
)
from biva.utils.jsonl import JsonlError, append_jsonl, read_jsonl, truncate_jsonl_after_step
from biva.utils.rng import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "CheckpointError",
    "ConfigError",
    "JsonlError",
    "append_jsonl",
    "apply_overrides",
    "atomic_directory",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "capture_rng_state",
    "checkpoint_path",
    "flatten_state_dict",
    "from_dict",
    "fsync_directory",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "load_config_file",
    "parse_override_value",
    "prune_checkpoints",
    "read_jsonl",
    "restore_rng_state",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "to_dict",
    "truncate_jsonl_after_step",
    "unflatten_state_dict",
]
