"""Train on one's own images: the run config for an image folder or .npz, inferred from it.

``config_for_data(path)`` reads the images once, infers what a config needs from them
(channels, size, 8-bit or binary, hence the likelihood) and picks the CPU config for their
size unless one is named. The held-out parts are carved with the run's seed, in shuffled order,
and the trainer writes their file names to ``RUN_DIR/data_split.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from biva.config.run import RunConfig, load_run_config
from biva.data import DatasetSplits, load_run_data

# Square image side -> the shipped config sized for a CPU (docs/guide/own-images.md).
CPU_CONFIGS = {32: "natural32_cpu", 64: "natural64_cpu"}
LIKELIHOODS = {"binary": "bernoulli", "8bit": "discretized_logistic"}


def config_for_data(
    path: str | Path, config: str | None = None, overrides: Sequence[str] = (),
    image_size: int | None = None,
) -> tuple[RunConfig, DatasetSplits, list[str]]:
    """(run config, the loaded data, lines saying what was inferred) for images at ``path``.

    ``path`` is an image folder (flat, one subfolder per class, or train/ valid/ test/) or an
    .npz file. ``config`` names the config to start from (default: the CPU config for the image
    size); ``overrides`` (``a.b=value``) are applied last, so they win over what is inferred.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such folder or file")
    source = ["data.name=" + ("npz" if path.is_file() else "folder"), f"data.path={path}"]
    if image_size is not None:
        source.append(f"data.image_size={image_size}")
    provisional = load_run_config(config or CPU_CONFIGS[32], [*source, *overrides])
    data = load_run_data(provisional)
    c, h, w = data.shape
    if config is None:
        if h != w or h not in CPU_CONFIGS:
            sizes = " or ".join(f"{s}x{s} ({n})" for s, n in CPU_CONFIGS.items())
            raise ValueError(
                f"{path}: images are {h}x{w}; the CPU configs are for {sizes}: pass "
                "--image-size 32 (or 64) to crop and resize them, or --config NAME with a "
                "model for this size")
        config = CPU_CONFIGS[h]
    inferred = [f"model.input_shape=[{c},{h},{w}]", f"model.likelihood={LIKELIHOODS[data.kind]}"]
    cfg = load_run_config(config, [*source, *inferred, *overrides])
    cfg.name = Path(config).stem
    if asdict(cfg.data) != asdict(provisional.data) or cfg.train.seed != provisional.train.seed:
        data = load_run_data(cfg)  # the named config carves or reads the data differently
    layout = (f"{len(data.class_names)} classes" if data.class_names
              else "no classes" if data.train.labels is None else "labelled")
    lines = [
        f"data: {path} ({layout}): {c}x{h}x{w}, {data.kind} -> model.input_shape=[{c},{h},{w}], "
        f"model.likelihood={LIKELIHOODS[data.kind]}",
        f"split: train {len(data.train)} / valid {len(data.valid)} / test {len(data.test)} "
        f"(seed {cfg.train.seed}; held-out parts shuffled; file names in RUN_DIR/data_split.json)",
        f"config: {config}" + (" (the CPU config for this image size; --config to choose another)"
                               if config in CPU_CONFIGS.values() else ""),
    ]
    return cfg, data, lines
