"""The model specification, one dataclass per family behind one base.

:class:`ModelConfig` holds what every model has (the images, the likelihood, the latents'
sizes, dropout, the semi-supervised classifier's input); :class:`HierarchyConfig` adds the
BIVA family's stages (VAE, LVAE, LVAE+, BIVA) and :class:`TopDownConfig` the VDVAE- and
NVAE-style hierarchies' spec. ``model.variant`` picks the family: :func:`model_config` and
every config reader build the right class from a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from biva.utils.config_io import ConfigError

#: The BIVA family (biva.models.hierarchy): stages of gated residual blocks, one per layer.
BIVA_FAMILY_VARIANTS = ("vae", "lvae", "lvae+", "biva")
#: The top-down residual families (biva.models.topdown): their hierarchy comes from ``spec``.
TOPDOWN_VARIANTS = ("vdvae", "nvae")
VARIANTS = BIVA_FAMILY_VARIANTS + TOPDOWN_VARIANTS
LIKELIHOODS = ("bernoulli", "discretized_logistic", "gaussian", "categorical")
__all__ = ["BIVA_FAMILY_VARIANTS", "ConfigError", "HierarchyConfig", "LIKELIHOODS",
           "ModelConfig", "TOPDOWN_VARIANTS", "TopDownConfig", "VARIANTS", "as_variant",
           "family_of", "model_config", "parse_spec"]


def parse_spec(spec: str, field_name: str = "model.spec") -> list[tuple[int, int]]:
    """``"16x3,8x2,4x1"`` -> [(16, 3), (8, 2), (4, 1)]: (resolution, blocks), image side first.

    Raises :class:`ConfigError` naming the field and the bad entry.
    """
    out = []
    for entry in spec.replace(" ", "").split(","):
        res, sep, count = entry.partition("x")
        if not (sep and res.isdigit() and count.isdigit()):
            raise ConfigError(f"{field_name}: expected entries RESxBLOCKS such as '16x3' "
                              f"separated by commas, found {entry!r} in {spec!r}")
        out.append((int(res), int(count)))
    return out



_Fail = Callable[[str, str, object], None]


@dataclass
class ModelConfig:
    """What every model has: ``input_shape`` images scored by ``likelihood``, latents of
    ``latents`` units (or channels), ``filters`` channels, dropout and the Gaussian floor.

    The base of the families and their union: ``ModelConfig(variant=..., ...)`` builds a
    :class:`HierarchyConfig` or a :class:`TopDownConfig` by ``variant`` ("biva" when absent),
    as :func:`model_config` does, and so does reading a mapping as a ``ModelConfig`` (a
    config file, a run's config.json).
    """

    # which model: vae, lvae, lvae+, biva, or the top-down families vdvae and nvae
    # (see docs/guide/models.md)
    variant: str = "biva"
    # (channels, height, width) of the images; height == width
    input_shape: tuple[int, ...] = (1, 28, 28)
    # p(x|z): bernoulli (binary images), discretized_logistic (8-bit), gaussian, categorical
    likelihood: Literal["bernoulli", "discretized_logistic", "gaussian", "categorical"] = (
        "bernoulli")
    # units (dense) or channels (conv) of each stochastic layer, bottom (z_1) first; L = len
    # (vdvae/nvae: channels of each latent, one value for all or L values)
    latents: tuple[int, ...] = (48, 40, 32, 24, 16, 8)
    # channels of each stage (one value for all, or L values; vdvae/nvae: one width)
    filters: tuple[int, ...] = (64,)
    # dropout in the inference network
    dropout_q: float = 0.5
    # dropout in the generative network
    dropout_p: float = 0.5
    # floor of every latent standard deviation: sigma = min_std + softplus(raw)
    min_std: float = 1e-3
    # components of the discretized logistic mixture
    n_mix: int = 10
    # bits per pixel of 8-bit data (the logistic mixture's 2^bits levels)
    bits: int = 8
    # classes of the categorical likelihood
    num_classes: int = 256
    # gaussian likelihood: a fixed standard deviation (0: learned)
    likelihood_std: float = 0.0
    # Semi-supervised models: q(y | x, z^BU) reads each z^BU_i as drawn ("sample") or its
    # posterior mean ("mean": the classifier then sees no sampling noise).
    classifier_input: Literal["sample", "mean"] = "sample"
    description: str = field(default="", compare=False)

    #: The variants this class describes (set by each family).
    FAMILY: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args, **values):
        # ModelConfig(...) is the union: it builds the family of ``variant`` (as model_config
        # does), so that code and files written before the split keep working.
        if cls is ModelConfig:
            if args:
                raise TypeError("ModelConfig takes keyword arguments (field=value)")
            cls = family_of(values.get("variant", "biva"))
            _check_fields(cls, values)
        return super().__new__(cls)

    @classmethod
    def config_class(cls, data: Mapping, path: str = "model") -> tuple[type, dict]:
        """The family class a mapping describes (by its ``variant``; "biva" when absent) and
        its keys for that class: the other family's fields are dropped (biva before the
        split wrote every field into config.json, and a file that switches a BIVA config's
        variant keeps that config's stage fields)."""
        variant = data.get("variant", "biva")
        family = family_of(variant, f"{path}.variant" if path else "variant")
        if cls is not ModelConfig and family is not cls:
            raise ConfigError(f"{path}.variant: expected one of {cls.FAMILY} for a "
                              f"{cls.__name__}, found {variant!r}")
        others = {f.name for f in fields(HierarchyConfig)} ^ {f.name for f in
                                                             fields(TopDownConfig)}
        own = {f.name for f in fields(family)}
        return family, {k: v for k, v in data.items() if k in own or k not in others}

    @property
    def topdown(self) -> bool:
        """True for the VDVAE-/NVAE-style families, whose hierarchy is ``spec``."""
        return self.variant in TOPDOWN_VARIANTS

    @property
    def n_layers(self) -> int:
        """L, the number of stochastic layers."""
        raise NotImplementedError

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        def fail(fld: str, expected: str, found) -> None:
            raise ConfigError(f"model.{fld}: expected {expected}, found {found!r}")

        if self.variant not in self.FAMILY:
            fail("variant", f"one of {self.FAMILY} for a {type(self).__name__} (the others: "
                 "build the config with model_config or as_variant)", self.variant)
        if self.likelihood not in LIKELIHOODS:
            fail("likelihood", f"one of {LIKELIHOODS}", self.likelihood)
        if self.classifier_input not in ("sample", "mean"):
            fail("classifier_input", "'sample' or 'mean'", self.classifier_input)
        if len(self.input_shape) != 3 or any(int(d) < 1 for d in self.input_shape):
            fail("input_shape", "(channels, height, width) of positive ints", self.input_shape)
        _, h, w = self.input_shape
        if h != w:
            fail("input_shape", "square images (height == width)", self.input_shape)
        for name in ("dropout_q", "dropout_p"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                fail(name, "a probability in [0, 1)", p)
        if not self.min_std > 0:
            fail("min_std", "a positive float", self.min_std)
        if self.n_mix < 1:
            fail("n_mix", "an int >= 1", self.n_mix)
        if not 1 <= self.bits <= 16:
            fail("bits", "an int in 1..16", self.bits)
        self._validate_family(fail)

    def _validate_family(self, fail: _Fail) -> None:
        raise NotImplementedError


@dataclass
class HierarchyConfig(ModelConfig):
    """The BIVA family (VAE, LVAE, LVAE+, BIVA): ``L = len(latents)`` stochastic layers, each
    above a stage of ``blocks`` gated residual blocks.

    Per-layer tuples (``filters``, ``kernels``, ``strides``) are listed bottom (layer 1) to top
    (layer L); a 1-tuple applies to every layer. Stage i has ``filters[i]`` channels, a first
    kernel ``kernels[i]`` and changes resolution by ``strides[i]``. Latents are dense vectors
    or convolutional feature maps (``latent_type``); a conv latent's kernel is
    ``latent_kernel``, 0 meaning the size of its feature map (appendix C).
    """

    variant: Literal["vae", "lvae", "lvae+", "biva"] = "biva"
    # dense vectors or convolutional feature maps
    latent_type: Literal["dense", "conv"] = "dense"
    # kernel of a conv latent's head and embedding; 0: the feature map's size (appendix C)
    latent_kernel: int = 0
    # first kernel of each stage (odd; one value or L values)
    kernels: tuple[int, ...] = (5, 3, 3, 3, 3, 3)
    # resolution change of each stage (one value or L values); the image size must divide
    strides: tuple[int, ...] = (2, 1, 1, 1, 1, 2)
    # gated residual blocks a stage (M)
    blocks: int = 3
    # BIVA only: "separate" gives p(z^BU_i | z_>i) and p(z^TD_i | z_>i) their own mean and std
    # (the literal factorization); "shared" uses one Gaussian for both (what the paper's
    # parameter count suggests, docs/guide/models.md "Parameter counts").
    biva_prior: Literal["separate", "shared"] = "separate"

    FAMILY = BIVA_FAMILY_VARIANTS

    @property
    def n_layers(self) -> int:
        """L, the number of stochastic layers."""
        return len(self.latents)

    def per_layer(self, name: str) -> tuple[int, ...]:
        """``filters``/``kernels``/``strides`` expanded to one value per layer (length L)."""
        values = getattr(self, name)
        return tuple(values) * self.n_layers if len(values) == 1 else tuple(values)

    def spatial_sizes(self) -> list[int]:
        """[r_0, r_1, ..., r_L]: the feature-map side at the input and after each stage."""
        sizes = [self.input_shape[-1]]
        for s in self.per_layer("strides"):
            sizes.append(sizes[-1] // s)
        return sizes

    def _validate_family(self, fail: _Fail) -> None:
        """The layer tuples, kernels, strides and blocks."""
        if self.biva_prior not in ("separate", "shared"):
            fail("biva_prior", "'separate' or 'shared'", self.biva_prior)
        if self.latent_type not in ("dense", "conv"):
            fail("latent_type", "'dense' or 'conv'", self.latent_type)
        n = len(self.latents)
        if n < 1:
            fail("latents", "at least one stochastic layer", self.latents)
        for i, z in enumerate(self.latents):
            if int(z) < 1:
                fail(f"latents[{i}]", "a positive size", z)
        for name in ("filters", "kernels", "strides"):
            values = getattr(self, name)
            if len(values) not in (1, n):
                fail(name, f"1 or {n} values (one per layer)", values)
            for i, v in enumerate(values):
                if int(v) < 1:
                    fail(f"{name}[{i}]", "an int >= 1", v)
        for i, k in enumerate(self.kernels):
            if k % 2 == 0:
                fail(f"kernels[{i}]", "an odd kernel size", k)
        h = size = self.input_shape[-1]
        for i, s in enumerate(self.per_layer("strides")):
            if size % s:
                raise ConfigError(
                    f"model.strides[{i}]: image size {h} is not divisible by the strides: "
                    f"stage {i + 1} gets a {size}x{size} feature map and stride {s}")
            size //= s
        if self.blocks < 1:
            fail("blocks", "an int >= 1", self.blocks)
        if self.latent_kernel < 0:
            fail("latent_kernel", "0 (feature-map size) or a positive kernel", self.latent_kernel)


@dataclass
class TopDownConfig(ModelConfig):
    """The VDVAE- and NVAE-style hierarchies: one latent block per stochastic layer, laid out
    by ``spec`` (blocks per resolution, image side first) over a residual stream of
    ``filters[0]`` channels; the encoder's blocks by ``encoder_spec``."""

    variant: Literal["vdvae", "nvae"] = "vdvae"
    # latent blocks per resolution, image side first, e.g. "16x3,8x2,4x1" (one stochastic
    # layer a block; L = the total). Resolutions fall and each divides the last.
    spec: str = ""
    # encoder blocks per resolution, same resolutions ("": as many as spec; nvae: a multiple
    # of spec's, the cells of one encoder group per latent group)
    encoder_spec: str = ""
    # a block's inner channels as a multiple of filters (0: the paper's, VDVAE's bottleneck
    # 0.25 and NVAE's expansion 6)
    inner_width: float = 0.0
    # inverse autoregressive flow steps appended to each latent group's posterior (masked
    # convolutions over the group, alternating orders; NVAE's num_nf = 1 is 2 steps); log q
    # is corrected by their log-determinant. 0: a Gaussian posterior
    posterior_flows: int = 0

    FAMILY = TOPDOWN_VARIANTS

    @property
    def n_layers(self) -> int:
        """L, the number of stochastic layers (the blocks of ``spec``)."""
        return sum(n for _, n in parse_spec(self.spec))

    def layer_resolutions(self) -> list[int]:
        """The feature-map side of each stochastic layer, layer 1 first."""
        return [r for r, n in parse_spec(self.spec) for _ in range(n)]

    def encoder_blocks(self) -> list[tuple[int, int]]:
        """(resolution, encoder blocks), image side first."""
        if not self.encoder_spec:
            return parse_spec(self.spec)
        return parse_spec(self.encoder_spec, "model.encoder_spec")

    def _validate_family(self, fail: _Fail) -> None:
        """``spec`` and ``encoder_spec``, the latents' channels, one width, the flows."""
        if not self.spec:
            fail("spec", f"blocks per resolution such as '16x3,8x2,4x1' for variant "
                 f"{self.variant!r}", self.spec)
        side = self.input_shape[-1]
        blocks = parse_spec(self.spec)
        last = side
        for i, (r, n) in enumerate(blocks):
            if n < 1 or r < 1:
                fail("spec", f"positive resolutions and block counts (entry {i + 1})", self.spec)
            if (i and r >= last) or last % r:
                fail("spec", f"falling resolutions, each dividing the one before (the first "
                     f"dividing the image side {side}); entry {i + 1} is {r}", self.spec)
            last = r
        enc = self.encoder_blocks()
        if [r for r, _ in enc] != [r for r, _ in blocks] or any(n < 1 for _, n in enc):
            fail("encoder_spec", f"the resolutions of model.spec ({[r for r, _ in blocks]}) "
                 "with at least one block each", self.encoder_spec)
        pairs = zip(enc, blocks, strict=True)
        if self.variant == "nvae" and any(e % d for (_, e), (_, d) in pairs):
            fail("encoder_spec", "for nvae, a multiple of model.spec's blocks at each "
                 "resolution (one encoder group of cells per latent group)", self.encoder_spec)
        L = self.n_layers
        if len(self.latents) not in (1, L):
            fail("latents", f"1 or {L} values (channels of each latent; L = {L} from "
                 "model.spec)", self.latents)
        if any(int(z) < 1 for z in self.latents):
            fail("latents", "positive channel counts", self.latents)
        if len(self.filters) != 1 or self.filters[0] < 1:
            fail("filters", "one positive width (the residual stream's channels)", self.filters)
        if self.inner_width < 0:
            fail("inner_width", "0 (the paper's) or a positive multiple", self.inner_width)
        if isinstance(self.posterior_flows, bool) or not (
                isinstance(self.posterior_flows, int) and self.posterior_flows >= 0):
            fail("posterior_flows", "an int >= 0 (IAF steps a latent group)",
                 self.posterior_flows)


def family_of(variant: str, where: str = "model.variant") -> type[ModelConfig]:
    """The config class of ``variant``: :class:`HierarchyConfig` or :class:`TopDownConfig`."""
    if variant in BIVA_FAMILY_VARIANTS:
        return HierarchyConfig
    if variant in TOPDOWN_VARIANTS:
        return TopDownConfig
    raise ConfigError(f"{where}: expected one of {VARIANTS}, found {variant!r}")


def model_config(**values) -> ModelConfig:
    """The family's config for ``values["variant"]`` ("biva" when absent) with ``values``;
    a field of the other family is an error naming it."""
    return ModelConfig(**values)   # ModelConfig.__new__ picks and checks the family


def _check_fields(family: type[ModelConfig], values: Mapping) -> None:
    own = {f.name for f in fields(family)}
    extra = sorted(set(values) - own)
    if extra:
        raise ConfigError(f"model.{extra[0]}: not a field of {family.__name__} (variants "
                          f"{', '.join(family.FAMILY)}); its fields: {', '.join(sorted(own))}")


def as_variant(model: ModelConfig, variant: str, **changes) -> ModelConfig:
    """``model`` as ``variant``, with ``changes``: within a family a ``dataclasses.replace``;
    across families the fields every model has are kept and the new family's come from
    ``changes`` (or their defaults)."""
    family = family_of(variant)
    keep = {f.name for f in fields(ModelConfig) if f.init} | (
        {f.name for f in fields(family)} if isinstance(model, family) else set())
    values = {k: getattr(model, k) for k in keep}
    return model_config(**{**values, "variant": variant, **changes})
