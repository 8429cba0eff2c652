import pytest

from biva import ConfigError, HierarchicalVAE, ModelConfig, preset


@pytest.mark.parametrize("field,value,needle", [
    ("latents", (8, -1), "model.latents[1]"),
    ("likelihood", "poisson", "model.likelihood"),
    ("variant", "ladder", "model.variant"),
    ("strides", (3, 1, 1), "not divisible by the strides"),
    ("filters", (8, 8), "model.filters"),
    ("kernels", (4,), "model.kernels[0]"),
    ("dropout_q", 1.5, "model.dropout_q"),
    ("min_std", 0.0, "model.min_std"),
    ("input_shape", (1, 8, 6), "model.input_shape"),
])
def test_bad_config_fails_at_construction_naming_the_field(field, value, needle):
    cfg = preset("digits")
    setattr(cfg, field, value)
    with pytest.raises(ConfigError) as err:
        HierarchicalVAE(cfg)
    assert needle in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="binary"):
        preset("cifar")


def test_presets_match_appendix_c():
    b = preset("binary")
    assert b.latents == (48, 40, 32, 24, 16, 8) and b.blocks == 3
    assert b.spatial_sizes() == [28, 14, 14, 14, 14, 14, 7]
    n = preset("natural32")
    assert n.latents == tuple(range(38, 9, -2)) and n.n_layers == 15
    assert n.spatial_sizes()[10:] == [16, 8, 8, 8, 8, 4]
    assert n.dropout_q == 0.2 and n.dropout_p == 0.0
    c = preset("natural64")
    assert c.n_layers == 20 and c.spatial_sizes()[-1] == 4 and c.latents[-1] == 1


def test_parameter_counts_are_stable():
    # Regression guard on the architecture (the parameter table in docs/guide/models.md comes
    # from these).
    def count(name, variant):
        m = HierarchicalVAE(preset(name, variant=variant))
        return sum(p.numel() for p in m.parameters())
    assert count("binary", "biva") == pytest.approx(28.69e6, rel=2e-3)
    assert count("binary", "vae") < count("binary", "biva")


def test_model_config_default_is_valid():
    ModelConfig().validate()
