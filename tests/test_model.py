import io

import pytest
import torch
from safetensors.torch import load, save

from biva import HierarchicalVAE, ModelConfig, preset
from biva.nn import WNConv2d, data_dependent_init, std_from_raw
from biva.nn.blocks import GatedResBlock

VARIANTS = ["vae", "lvae", "lvae+", "biva"]


def tiny_conv(variant: str) -> ModelConfig:
    return ModelConfig(variant=variant, input_shape=(3, 8, 8), likelihood="discretized_logistic",
                       latents=(6, 4, 2), latent_type="conv", filters=(8,), kernels=(3,),
                       strides=(2, 1, 2), blocks=2, dropout_q=0.1, dropout_p=0.1, n_mix=2)


def mixed_conv(variant: str) -> ModelConfig:
    """Every stage different: filters, kernels, strides and (latent_kernel 0) latent kernels."""
    return ModelConfig(variant=variant, input_shape=(3, 8, 8), likelihood="discretized_logistic",
                       latents=(6, 4, 2), latent_type="conv", filters=(4, 6, 8),
                       kernels=(3, 5, 3), strides=(2, 1, 2), latent_kernel=0, blocks=2,
                       dropout_q=0.1, dropout_p=0.1, n_mix=2)


def rgb_batch(b=4):
    return torch.randint(0, 256, (b, 3, 8, 8)).float() / 127.5 - 1


def parts(model, path: str, name: str) -> list:
    """One part of every layer on a path ("bu": layers 1..L, "td": layers 1..L-1), where the
    layer has it (e.g. ``parts(m, "bu", "head")``: q(z^BU_i) and q(z_L) heads)."""
    layers = model.bu_layers if path == "bu" else model.td_layers[1:]
    return [getattr(layer, name) for layer in layers if getattr(layer, name) is not None]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["dense", "conv", "mixed"])
def test_shapes_and_gradients_reach_every_parameter(variant, kind):
    """"mixed": a stage that takes the channels, kernel or size of its neighbour fails here."""
    torch.manual_seed(0)
    if kind == "dense":
        model, x = HierarchicalVAE(preset("digits", variant=variant)), torch.bernoulli(
            torch.full((4, 1, 8, 8), 0.4))
    else:
        model = HierarchicalVAE((tiny_conv if kind == "conv" else mixed_conv)(variant))
        x = rgb_batch()
    if kind == "mixed":  # latent_kernel 0: every latent conv spans its own layer's map
        r = model.config.spatial_sizes()   # [8, 4, 4, 2]

        def kernels(modules):
            return [m.proj.v.shape[-1] for m in modules]

        assert kernels([layer.embed for layer in model.td_layers]) == r[1:]
        assert kernels([model.bu_layers[-1].head]) == r[-1:]
        assert kernels(parts(model, "td", "prior_head")) == r[1:-1]
        assert kernels(parts(model, "td", "posterior_head")) == (
            r[1:-1] if variant != "vae" else [])
        assert kernels(parts(model, "bu", "head")[:-1]) == kernels(parts(model, "bu", "embed")) == (
            r[1:-1] if variant in ("vae", "biva") else [])
    model.initialize(x)
    out = model(x)
    groups = 2 * model.n_layers - 1 if variant == "biva" else model.n_layers
    assert out.kl.shape == (4, groups) and out.elbo.shape == (4,)
    assert out.x_params.shape[0] == 4 and out.loss.dim() == 0
    out.loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert model.sample(3).shape == (3, *x.shape[1:])
    out3 = model(x, n_samples=3)
    assert out3.log_weight.shape == (12,) and out3.elbo.shape == (4,)


@pytest.mark.parametrize("variant", VARIANTS)
def test_top_posterior_is_the_forward_passes_q_of_z_top_draw_for_draw(variant):
    torch.manual_seed(0)
    model = HierarchicalVAE(tiny_conv(variant)).eval()
    x = rgb_batch()
    model.initialize(x)
    top = f"z{model.n_layers}"
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    q = model.top_posterior(x)
    torch.testing.assert_close(q.mu, out.posteriors[top].mu)
    torch.testing.assert_close(q.sigma, out.posteriors[top].sigma)
    torch.testing.assert_close(q.sample(), out.latents[top])


def test_variants_differ_exactly_where_the_paper_says():
    m = {v: HierarchicalVAE(preset("binary-cpu", variant=v)) for v in VARIANTS}
    L = 6
    assert m["biva"].n_groups == 2 * L - 1 and m["lvae+"].n_groups == L
    # BU latents only in BIVA (and the VAE, whose whole q is bottom-up).
    def bu_latents(model):   # the heads below the top one: q(z^BU_i | d~_{i,M})
        return len(parts(model, "bu", "head")) - 1

    assert bu_latents(m["biva"]) == L - 1 and bu_latents(m["lvae"]) == 0
    assert bu_latents(m["lvae+"]) == 0 and bu_latents(m["vae"]) == L - 1
    assert len(parts(m["biva"], "bu", "embed")) == L - 1 and parts(m["lvae"], "bu", "embed") == []
    # The deterministic top-down skip path: blocks with an auxiliary input in the TD stages.
    def td_skips(model):
        return sum(b.aux is not None for layer in model.td_layers for b in layer.stage.blocks)
    assert td_skips(m["lvae"]) == 0 and td_skips(m["vae"]) == 0
    assert td_skips(m["lvae+"]) == td_skips(m["biva"]) == (L - 1) * 2   # stages 0..L-2, M=2
    # Top-down inference (shared TD parameters + merge) in all but the VAE.
    assert len(parts(m["vae"], "td", "merge")) == 0
    assert len(parts(m["lvae"], "td", "merge")) == L - 1
    # The VAE's BU stages see only z_{i-1}: no skips from the stage below; the others take
    # the blocks of stage i - 1 as skips in stages 2..L (eq. 5/8).
    assert all(b.aux is None for s in parts(m["vae"], "bu", "stage") for b in s.blocks)
    for v in ("lvae", "lvae+", "biva"):
        bu_skips = [b.aux is not None for s in parts(m[v], "bu", "stage") for b in s.blocks]
        assert bu_skips == [False] * 2 + [True] * (L - 1) * 2, v
    # LVAE+ is LVAE plus the TD path; BIVA is LVAE+ plus the BU latents.
    n = {v: sum(p.numel() for p in model.parameters()) for v, model in m.items()}
    assert n["lvae"] < n["lvae+"] < n["biva"]
    # Dropout where the config puts it: q's merge blocks use dropout_q.
    cfg = preset("binary-cpu", variant="biva", dropout_q=0.3, dropout_p=0.1)
    merges = parts(HierarchicalVAE(cfg), "td", "merge")
    assert [b.dropout.p for b in merges] == [0.3] * (L - 1)


def test_a_block_refuses_a_skip_it_has_no_input_for_and_the_reverse():
    """A skip connection is never dropped silently (a stage built without it would ignore it)."""
    x, c = torch.randn(2, 4, 6, 6), torch.randn(2, 3, 6, 6)
    plain, with_aux = GatedResBlock(4, 4, 6, 6), GatedResBlock(4, 4, 6, 6, aux_ch=3)
    assert plain(x).shape == with_aux(x, c).shape == x.shape
    with pytest.raises(ValueError, match="no auxiliary input; one was given"):
        plain(x, c)
    with pytest.raises(ValueError, match="an auxiliary input; none was given"):
        with_aux(x)


def test_std_can_go_below_one_but_not_below_the_floor():
    s = std_from_raw(torch.tensor([-50.0, -3.0, 0.0, 5.0]), 1e-3)
    assert s[0] >= 1e-3 and s[0] < 2e-3 and s[1] < 0.2
    assert s[2] == pytest.approx(1.001) and s[3] > 4


def test_data_dependent_init_normalizes_preactivations_and_forward_never_reinits():
    torch.manual_seed(0)
    conv = WNConv2d(3, 5, 3)
    x = torch.randn(16, 3, 6, 6) * 4 + 2
    data_dependent_init(conv, lambda: conv(x))
    y = conv(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(5), atol=1e-4,
                               rtol=0)
    g = conv.g.detach().clone()
    conv(x * 10)
    assert torch.equal(g, conv.g)   # forward never touches the init


def test_initialize_sets_flag_and_survives_save_load_bit_identically():
    torch.manual_seed(0)
    cfg = preset("digits")
    a = HierarchicalVAE(cfg)
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.4))
    assert not bool(a.initialized)
    a.initialize(x)
    assert bool(a.initialized)
    blob = save({k: v.contiguous() for k, v in a.state_dict().items()})
    b = HierarchicalVAE(cfg)
    b.load_state_dict(load(io.BytesIO(blob).getvalue()))
    assert bool(b.initialized)
    for model in (a, b):
        model.eval()
    torch.manual_seed(42)
    oa = a(x, n_samples=2)
    torch.manual_seed(42)
    ob = b(x, n_samples=2)
    assert torch.equal(oa.log_weight, ob.log_weight) and torch.equal(oa.x_params, ob.x_params)


def test_sampling_with_a_generator_is_reproducible_and_temperature_scales_the_noise():
    model = HierarchicalVAE(preset("digits"))
    model.initialize(torch.bernoulli(torch.full((8, 1, 8, 8), 0.4)))
    p1 = model.sample_params(4, 1.0, torch.Generator().manual_seed(0))
    p2 = model.sample_params(4, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(p1, p2)
    p0 = model.sample_params(4, 0.0, torch.Generator().manual_seed(0))
    p0b = model.sample_params(4, 0.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(p0, p0b)     # temperature 0: the noise does not matter
    with pytest.raises(ValueError, match="one per layer"):
        model.sample(2, temperature=[1.0, 0.5])


def test_prior_layers_out_of_range_is_an_error():
    model = HierarchicalVAE(preset("digits"))
    with pytest.raises(ValueError, match="prior_layers"):
        model(torch.zeros(1, 1, 8, 8), prior_layers=3)


@pytest.mark.parametrize("kernel", [2, 3, 4, 8])
def test_same_padding_of_even_kernels_matches_torch_without_its_warning(kernel):
    import warnings

    import torch.nn.functional as F

    from biva.nn.weightnorm import WNConv2d

    conv = WNConv2d(3, 5, kernel, padding="same")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = conv._out(F.conv2d(x, conv.weight(), conv.bias, padding="same"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = conv(x)
    assert got.shape == want.shape == (2, 5, 8, 8)
    torch.testing.assert_close(got, want)


def test_decode_gives_the_mean_by_default_a_draw_on_request_and_names_bad_modes():
    torch.manual_seed(0)
    model = HierarchicalVAE(preset("digits", filters=(8,), blocks=1))
    params = torch.randn(64, 1, 8, 8)
    torch.testing.assert_close(model.to_images(params), torch.sigmoid(params))
    torch.manual_seed(1)
    draw = model.to_images(params, "sample")
    assert set(draw.unique().tolist()) == {0.0, 1.0}
    # A draw, not the mean: about sigmoid(params) of the pixels are 1.
    assert abs(float(draw.mean() - torch.sigmoid(params).mean())) < 0.05
    with pytest.raises(ValueError, match="mode must be 'mean' or 'sample', got 'median'"):
        model.to_images(params, "median")


@pytest.mark.parametrize("likelihood,fields,expected", [
    ("discretized_logistic", {"n_mix": 3, "bits": 5}, {"n_mix": 3, "bits": 5}),
    ("gaussian", {"likelihood_std": 0.25}, {"fixed_std": 0.25}),
    ("categorical", {"num_classes": 7}, {"num_classes": 7}),
])
def test_the_likelihood_is_built_with_the_configs_settings(likelihood, fields, expected):
    """Defaults (10 components, 8 bits, 256 classes, learned std) would also give a valid
    model, so only these attributes show a setting that did not reach the likelihood."""
    cfg = ModelConfig(variant="biva", input_shape=(3, 8, 8), likelihood=likelihood,
                      latents=(4, 2), latent_type="conv", filters=(8,), kernels=(3,),
                      strides=(2, 2), blocks=1, **fields)
    model = HierarchicalVAE(cfg)
    for name, value in expected.items():
        assert getattr(model.likelihood, name) == value, name
    assert model.out_conv.v.shape[0] == model.likelihood.param_channels(3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_latent_heads_stay_float32_under_bf16_autocast(variant):
    """The bound's latent log-densities are never computed from bf16-rounded (mu, sigma)."""
    torch.manual_seed(0)
    model = HierarchicalVAE(tiny_conv(variant))
    x = rgb_batch()
    model.initialize(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    for name, q in out.posteriors.items():
        assert q.mu.dtype == q.sigma.dtype == torch.float32, name
        assert out.latents[name].dtype == torch.float32, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_without_free_bits_is_the_negative_elbo_even_where_a_kl_sample_is_negative(variant):
    """Free bits 0 means no clamp at all: a one-sample KL term (log q - log p of the draw) can
    be negative, and the loss must keep it. Also checks the named output's bookkeeping."""
    torch.manual_seed(0)
    model = HierarchicalVAE(tiny_conv(variant)).eval()
    x = rgb_batch(8)
    model.initialize(x)
    torch.manual_seed(1)
    out = model(x, n_samples=4)
    assert (out.kl < 0).any(), "no negative KL sample: the check below could not fail"
    torch.testing.assert_close(out.loss, -(out.log_px - out.kl.sum(1)).mean())
    torch.testing.assert_close(out.loss, -out.log_weight.mean())
    assert out.group_names == model.group_names and out.n_samples == 4
    assert [model.group_layer(g) for g in model.group_names] == [
        int(g[1:].split("_")[0]) for g in model.group_names]
    assert model.group_layer("z3_td") == 3 and model.group_layer("z12") == 12


def test_a_top_log_prior_replaces_the_standard_normal_in_the_bound():
    """forward(top_log_prior=f): log p(z_L) is f(z_L) (the 2-D density experiments' prior)."""
    from biva.nn.gaussian import standard_normal_log_prob

    torch.manual_seed(0)
    model = HierarchicalVAE(tiny_conv("biva")).eval()
    x = rgb_batch()
    model.initialize(x)
    seen = []

    def shifted(z):
        seen.append(z.shape)
        return standard_normal_log_prob(z) - 1.5

    torch.manual_seed(1)
    plain = model(x, n_samples=2)
    torch.manual_seed(1)
    other = model(x, n_samples=2, top_log_prior=shifted)
    assert seen == [plain.latents[f"z{model.n_layers}"].shape]
    torch.testing.assert_close(other.log_weight, plain.log_weight - 1.5)
    torch.testing.assert_close(other.kl[:, -1], plain.kl[:, -1] + 1.5)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_every_latent_starts_near_its_prior_after_the_data_dependent_init(kind):
    """The latent heads are initialized at scale 0.1: right after ``initialize`` every q and
    p has means of spread ~0.1 and sigmas ~1, so no group starts with a large KL."""
    torch.manual_seed(0)
    if kind == "dense":
        model = HierarchicalVAE(preset("digits", variant="biva"))
        x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.4))
    else:
        model, x = HierarchicalVAE(tiny_conv("biva")), rgb_batch(64)
    model.initialize(x)
    with torch.no_grad():
        out = model.eval()(x)
    for name, q in out.posteriors.items():
        assert 0.01 < float(q.mu.std()) < 0.3, (name, float(q.mu.std()))
        assert (q.sigma - 1).abs().max() < 0.5, name
