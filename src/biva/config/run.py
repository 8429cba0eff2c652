"""Run configuration: model + data + training + evaluation, as plain validated dataclasses.

A config file (YAML or JSON) has the sections ``model``, ``data``, ``train`` and ``eval``.
``model.preset`` names a preset from :mod:`biva.config.presets` whose fields the rest of the section
overrides. The resolved config (preset expanded) is what a run directory stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Literal

from biva.config.model import ConfigError, HierarchyConfig, ModelConfig
from biva.config.presets import preset
from biva.utils.config_io import apply_overrides, from_dict, load_config_file
from biva.utils.deprecation import warn_renamed


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how binary data are binarized."""

    name: str = "digits"
    root: str | None = None          # data folder; default $BIVA_DATA_DIR or ~/.cache/biva/data
    path: str | None = None          # for "folder" / "npz" datasets
    binarization: Literal["static", "dynamic"] | None = None   # None: the dataset's default
    valid_size: int | None = None    # None: the dataset's default
    image_size: int | None = None    # folder / npz images: crop and resize to N x N
    download: bool = False
    labels_per_class: int = 0        # > 0: semi-supervised split (labelled per class)
    labelled_batch_size: int = 0     # semi-supervised: labelled rows a step; 0 = batch_size
    num_classes: int | None = None   # semi-supervised: set from the dataset by the trainer
    split_seed: int | None = None    # seed of carved held-out parts and of a static
                                     # binarization; None: train.seed (set it so runs of
                                     # several seeds share one test set)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid ``data.*`` field."""
        if self.valid_size is not None and self.valid_size < 1:
            raise ConfigError(f"data.valid_size: expected a positive int, found {self.valid_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"data.image_size: expected None or a positive int, found "
                              f"{self.image_size}")
        if self.labels_per_class < 0:
            raise ConfigError(
                f"data.labels_per_class: expected an int >= 0, found {self.labels_per_class}")
        if self.labelled_batch_size < 0:
            raise ConfigError(f"data.labelled_batch_size: expected an int >= 0, found "
                              f"{self.labelled_batch_size}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"data.num_classes: expected None or an int >= 2, found "
                              f"{self.num_classes}")


@dataclass
class TrainConfig:
    """The optimization recipe; defaults follow the paper (appendix C) and its reference code.

    Adamax(0.9, 0.999); lr warms up linearly over ``warmup_steps`` to ``lr`` then decays by
    ``lr_decay`` per step to ``min_lr``; free bits ``free_bits`` per group and example, then
    a fine-tuning phase with free bits 0 for the last ``finetune_steps``; KL weight warm-up
    over ``kl_warmup_steps``; EMA of the parameters (decay ``ema_decay``, warmed up) for
    evaluation.
    Updates whose gradient norm is non-finite or above ``skip_threshold`` are skipped (counted
    in the logs); others are clipped to ``grad_clip``. ``skip_threshold: auto`` scales the
    threshold to the data: ``skip_factor`` x the median of the last ``skip_window`` finite
    gradient norms; no finite update is skipped in the lr warm-up or before
    ``skip_min_history`` norms are known (the first norms of 32x32 RGB data are ~1,700 and
    grow to ~50,000 within the warm-up; binary images start at ~200-400).
    """

    # optimizer steps of the run
    steps: int = 100_000
    # images a step (the global batch under torchrun)
    batch_size: int = 48
    # peak learning rate of Adamax, reached after warmup_steps
    lr: float = 2e-3
    # the floor of the decayed learning rate
    min_lr: float = 1e-4
    # learning rate x lr_decay per step after the warm-up
    lr_decay: float = 0.999999
    # linear learning-rate warm-up
    warmup_steps: int = 200
    # Adamax (beta1, beta2)
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    # lambda: each latent group's KL counts at least this much (nats, per example)
    free_bits: float = 2.0
    # the last steps train with free bits 0 (the paper's fine-tuning)
    finetune_steps: int = 0
    # the KL weight grows linearly from 0 to 1 over these steps
    kl_warmup_steps: int = 0
    # NVAE's spectral regularization: this x the sum of the convolutions' largest singular
    # values joins the loss (vdvae/nvae models; NVAE used 1e-2 to 1e-1; 0: off)
    spectral_reg: float = 0.0
    # decay of the EMA of the parameters used for evaluation and sampling
    ema_decay: float = 0.9995
    ema_warmup: bool = True          # decay min(ema_decay, (1+n)/(10+n)) after n updates
    # gradients are clipped to this norm
    grad_clip: float = 200.0
    # updates with a larger gradient norm are skipped; auto: data-scaled
    skip_threshold: float | Literal["auto"] = "auto"
    # auto threshold: this x the median of recent gradient norms
    skip_factor: float = 10.0
    # auto threshold: how many recent gradient norms
    skip_window: int = 200
    # auto threshold: no skipping before this many norms are known
    skip_min_history: int = 20
    # after this many skips in a row a clipped update is taken
    max_consecutive_skips: int = 20
    max_bad_steps: int = 200         # stop (non-zero exit) after this many skipped/forced in a row
    # fixes the init, batches, dropout and latent draws (and the split, see data.split_seed)
    seed: int = 0
    device: str = "auto"             # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: Literal["auto", "none", "bf16"] = "auto"   # auto: bf16 where native (precision.py)
    channels_last: bool = True       # channels-last activations (faster convs; same results)
    compile: bool = False            # torch.compile the model (minutes to compile; on CPU no gain)
    grad_checkpointing: bool = False  # recompute each stage in backward: less memory, ~25% slower
    threads: int = 0                 # CPU threads; 0 leaves torch's default
    # steps between train records in metrics.jsonl
    log_every: int = 50
    # steps between validations (and best-checkpoint updates)
    eval_every: int = 1000
    eval_batches: int = 0            # validation batches per evaluation; 0 = whole split
    # steps between checkpoints
    checkpoint_every: int = 1000
    # step checkpoints kept (best/ is kept apart)
    keep_last: int = 2
    init_batch: int = 256            # examples for the data-dependent weight-norm init
    init_from: str | None = None     # a checkpoint whose weights (and EMA) start this new run
                                     # instead of the init: same architecture, step 0
    max_minutes: float = 0.0         # > 0: stop (with a checkpoint) after this much wall time
    max_cpu_minutes: float = 0.0     # > 0: the same after this much CPU time of the run (over
                                     # resumes): equal-budget comparisons on a shared machine
    # a progress bar on stderr
    progress: bool = True
    alpha: float | None = None       # semi-supervised CE weight; None: 0.1 * N_train / N_labelled
    # semi-supervised objective: "balanced" (mean F + mean U), "paper" (eqs. 15-20: y in
    # q(z_L|x,y), data-set-sum weights), "supervised" (the classifier on the labels alone)
    ssl_objective: Literal["balanced", "paper", "supervised"] = "balanced"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid ``train.*`` field."""
        if not self.spectral_reg >= 0:
            raise ConfigError(f"train.spectral_reg: expected a weight >= 0, found "
                              f"{self.spectral_reg}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
                     "init_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: expected an int >= 1, found "
                                  f"{getattr(self, name)}")
        if not 0 <= self.finetune_steps <= self.steps:
            raise ConfigError(f"train.finetune_steps: expected 0..steps ({self.steps}), found "
                              f"{self.finetune_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: expected a value in [0, 1), found "
                              f"{self.ema_decay}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError(f"train.lr/min_lr: expected lr > 0 and min_lr >= 0, found "
                              f"{self.lr}, {self.min_lr}")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"train.adam_betas: expected 2 values, found {self.adam_betas}")
        if self.free_bits < 0:
            raise ConfigError(f"train.free_bits: expected >= 0, found {self.free_bits}")
        if self.ssl_objective not in ("balanced", "paper", "supervised"):
            raise ConfigError(f"train.ssl_objective: expected 'balanced', 'paper' or "
                              f"'supervised', found {self.ssl_objective!r}")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"train.alpha: expected None or >= 0, found {self.alpha}")
        if not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip: expected a norm > 0, found {self.grad_clip}")
        if self.skip_threshold != "auto" and not self.skip_threshold > 0:
            raise ConfigError(f"train.skip_threshold: expected 'auto' or a norm > 0, found "
                              f"{self.skip_threshold}")
        if not self.skip_factor > 1:
            raise ConfigError(f"train.skip_factor: expected a factor > 1, found "
                              f"{self.skip_factor}")
        if not 1 <= self.skip_min_history <= self.skip_window:
            raise ConfigError(f"train.skip_min_history: expected 1..skip_window "
                              f"({self.skip_window}), found {self.skip_min_history}")
        for name in ("max_minutes", "max_cpu_minutes"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name}: expected minutes >= 0 (0: no budget), found "
                                  f"{getattr(self, name)}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"train.max_bad_steps: expected an int >= 1, found "
                              f"{self.max_bad_steps}")
        if self.max_consecutive_skips < 1:
            raise ConfigError(f"train.max_consecutive_skips: expected an int >= 1, found "
                              f"{self.max_consecutive_skips}")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last: expected an int >= 1 (the newest checkpoint "
                              f"is always kept), found {self.keep_last}")
        if self.threads < 0:
            raise ConfigError(f"train.threads: expected 0 (torch's default) or a positive "
                              f"int, found {self.threads}")


@dataclass
class EvalConfig:
    """Evaluation defaults: importance samples and the memory bound of one batched pass."""

    # importance samples K of L_K (eval.k before 0.2)
    n_samples: int = 1000
    # test examples a batch
    batch_size: int = 100
    max_batch: int = 4096            # rows (samples x examples) of one batched pass
    n_examples: int = 0              # 0 = the whole split

    def validate(self) -> None:
        """Raise :class:`ConfigError` if ``eval.n_samples`` or a batch size is not positive."""
        if self.n_samples < 1 or self.batch_size < 1 or self.max_batch < 1:
            raise ConfigError("eval.n_samples, eval.batch_size and eval.max_batch must be >= 1")


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as ``config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=HierarchyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "run"

    def validate(self) -> None:
        """Validate every section; the error names the first invalid field."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.eval.validate()
        if self.train.spectral_reg and not self.model.topdown:
            raise ConfigError(f"train.spectral_reg: spectral regularization is for the vdvae and "
                              f"nvae models; model.variant is {self.model.variant!r} (set 0)")


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (``biva train --config NAME``)."""
    folder = resources.files("biva") / "configs"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _config_source(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return load_config_file(path)
    shipped = resources.files("biva") / "configs" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        import difflib

        close = difflib.get_close_matches(name_or_path, shipped_configs(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"config {name_or_path!r}: no such file, and not a shipped config "
                          f"({hint}shipped: {', '.join(shipped_configs())})")
    with resources.as_file(shipped) as p:
        return load_config_file(p)


#: Fields renamed since 0.1, old dotted name -> new. Config files, run directories and
#: ``--set`` overrides that spell the old name still load (one deprecation line each) until
#: biva 0.3.
RENAMED_FIELDS = {"eval.k": "eval.n_samples"}


def migrate_renamed_fields(data: dict, where: str = "config", warn: bool = True) -> dict:
    """``data`` (a raw config dict) with every old field name of :data:`RENAMED_FIELDS`
    moved to its new name, warning for each when ``warn`` (a config the user wrote; a run
    directory's config.json, which biva wrote, is read as it is); both names at once is an
    error."""
    data = dict(data)
    for old, new in RENAMED_FIELDS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        part = data.get(section)
        if not isinstance(part, dict) or old_key not in part:
            continue
        part = dict(part)
        if new_key in part and part[new_key] != part[old_key]:
            raise ConfigError(f"{where}: both {old} ({part[old_key]!r}) and {new} "
                              f"({part[new_key]!r}); {old} is the old name of {new}: keep one",
                              path=old)
        if warn:
            warn_renamed(old, new, where, stacklevel=4)
        part[new_key] = part.pop(old_key)
        data[section] = part
    return data


def migrate_overrides(overrides: list[str]) -> list[str]:
    """``KEY=VALUE`` overrides with old field names (:data:`RENAMED_FIELDS`) renamed."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        new = RENAMED_FIELDS.get(key.strip())
        if new and sep:
            warn_renamed(f"--set {key.strip()}", f"--set {new}", stacklevel=4)
            item = f"{new}={value}"
        out.append(item)
    return out


def resolve_config(data: dict, where: str = "config", warn: bool = True) -> RunConfig:
    """Build a validated :class:`RunConfig` from a raw dict (expands ``model.preset``; old
    field names are read as their new ones, see :data:`RENAMED_FIELDS`, with a warning when
    ``warn``)."""
    data = migrate_renamed_fields(data, where, warn)
    model = dict(data.get("model") or {})
    if "preset" in model:
        base = asdict(preset(model.pop("preset")))
        base.pop("description", None)
        base.update(model)  # unknown keys are reported by from_dict, with suggestions
        model = base
    data["model"] = model
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg


def read_run_config(path: str | Path) -> RunConfig:
    """The resolved config of a run's ``config.json`` (or a shipped model's); every error
    names the file. Files written by earlier versions are read with their old field names
    renamed, silently: biva wrote them, and resuming a run rewrites them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {path.parent} a biva run directory?")
    raw = load_config_file(path)
    try:
        return resolve_config(raw, str(path), warn=False)
    except ConfigError as e:
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}", path=e.path) from None


def _check_model_overrides(model: ModelConfig, overrides: list[str]) -> None:
    """A ``--set model.X`` of a field the chosen family does not have is refused (a file's
    fields of the other family are dropped quietly: older config.json files hold every field,
    and a BIVA config switched to nvae keeps its stage fields)."""
    own = {f.name for f in fields(model)}
    for item in overrides:
        section, _, name = item.partition("=")[0].strip().partition(".")
        name = name.partition(".")[0]
        if section == "model" and name and name not in own and name != "preset":
            raise ConfigError(
                f"model.{name}: not a field of the {model.variant} model ({type(model).__name__}"
                f", variants {', '.join(model.FAMILY)}), so --set model.{name} would have no "
                f"effect; its fields: {', '.join(sorted(own))}", path=f"model.{name}")


def load_run_config(name_or_path: str | None = None, overrides: list[str] | None = None,
                    base: dict | None = None) -> RunConfig:
    """Load a shipped config by name or a YAML/JSON file, apply ``a.b=value`` overrides."""
    raw = base if base is not None else (_config_source(name_or_path) if name_or_path else {})
    raw = migrate_renamed_fields(raw, str(name_or_path or "config"))
    overrides = migrate_overrides(overrides or [])
    raw = apply_overrides(raw, overrides)
    try:
        cfg = resolve_config(raw)
        _check_model_overrides(cfg.model, overrides)
        return cfg
    except ConfigError as e:
        if not name_or_path or str(e).startswith(str(name_or_path)):
            raise
        where = (name_or_path if Path(name_or_path).suffix in (".yaml", ".yml", ".json")
                 else f"config {name_or_path!r}")
        raise ConfigError(f"{where} (with the --set overrides): {e}", path=e.path) from None


# Fields a finished or interrupted run may change when resumed: how long it trains, nothing
# about what it trains.
BUDGET_FIELDS = ("train.steps", "train.max_minutes", "train.max_cpu_minutes")


def extend_budget(raw: dict, overrides: list[str], source: Path | str) -> RunConfig:
    """The resolved config of ``raw`` (a run's config.json) with budget overrides applied;
    refuses any other field. Prints each change (e.g. ``train.max_cpu_minutes: 20.0 -> 120.0``)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in BUDGET_FIELDS:
            raise ConfigError(f"{source}: a resumed run keeps its config; only the budget "
                              f"({', '.join(BUDGET_FIELDS)}) can change, not {key!r}")
    # Validated (e.g. finetune_steps <= steps) before anything is written.
    try:
        cfg = resolve_config(apply_overrides(raw, overrides), str(source), warn=False)
        before = resolve_config(raw, str(source), warn=False).train
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}", path=e.path) from None
    for key in BUDGET_FIELDS:
        name = key.split(".")[1]
        if getattr(before, name) != getattr(cfg.train, name):
            print(f"{source}: {key}: {getattr(before, name)} -> {getattr(cfg.train, name)}")
    return cfg
