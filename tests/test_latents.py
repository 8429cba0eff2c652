"""The latent API (encode, decode, reconstruct, interpolate) on a trained model of every
unsupervised family (the fixture runs of ``tests/fixtures/families``), and ``biva sample
--from``, the command that draws what each layer holds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biva.cli.main import main
from biva.config import DataKind
from biva.data import evaluation_split, load_run_data, to_model_input
from biva.models import build_hierarchy
from biva.runs.loading import load_trained

FIXTURES = Path(__file__).parent / "fixtures" / "families"
FAMILIES = ["biva", "lvae+", "lvae", "vae", "vdvae", "nvae", "nvae+flows"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(model, x): a family's trained fixture model in eval mode and 6 test digits."""
    flows = request.param.endswith("+flows")
    run = tmp_path_factory.mktemp("latents") / request.param
    shutil.copytree(FIXTURES / request.param.removesuffix("+flows"), run)
    model, cfg, _ = load_trained(run)
    split = evaluation_split(load_run_data(cfg), "test")
    x = to_model_input(split.images[:6], DataKind.for_likelihood(cfg.model.likelihood))
    if flows:   # the NVAE-style fixture's layout with 2 IAF steps a group, initialized
        torch.manual_seed(0)
        model = build_hierarchy(replace(cfg.model, posterior_flows=2))
        model.initialize(x)
    return model.eval(), x


def test_encode_names_every_group_with_its_layer_and_shape(family):
    model, x = family
    code = model.encode(x)
    assert list(code.groups) == model.group_names
    for name, post in code.groups.items():
        layer = code.layers[name]
        assert layer == model.group_layer(name)
        for t in (post.mean, post.std, post.draw):
            assert t.shape == (6, *model.latent_shape(layer))
        assert (post.std > 0).all()
        assert not torch.equal(post.draw, post.mean)   # a draw, not the mean
    means = model.encode(x, "mean")
    for post in means.groups.values():   # with flows the draw is the mean pushed through
        flows = model.config.topdown and model.config.posterior_flows
        assert torch.equal(post.draw, post.mean) != bool(flows)


def test_decoding_the_posterior_means_gives_the_models_own_mean_reconstruction(family):
    """decode's top-down pass (given latents) against forward's (q means): catches a decoder
    that reads a layer at the wrong place or skips the class-free context."""
    model, x = family
    with torch.no_grad():
        own = model(x, posterior_mode="mean").x_params
    dec = model.decode(model.encode(x, "mean").draws())   # with flows, z_T of the means
    torch.testing.assert_close(dec.x_params, own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dec.images, model.to_images(own))


def test_keeping_every_layer_is_the_full_posterior_pass(family):
    model, x = family
    torch.manual_seed(11)
    with torch.no_grad():
        full = model(x).x_params
    torch.manual_seed(11)
    rec = model.reconstruct(x, keep=model.n_layers)
    torch.testing.assert_close(rec.x_params, full, rtol=1e-5, atol=1e-5)


def test_keeping_no_layer_is_a_prior_sample(family):
    model, x = family
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    rec = model.reconstruct(x, keep=0, generator=g())
    torch.testing.assert_close(rec.x_params, model.sample_params(6, generator=g()))
    assert not torch.allclose(rec.x_params, model.reconstruct(x, keep=1, generator=g()).x_params)


def test_keep_k_takes_the_top_k_layers_from_q_as_the_l_greater_k_pass_does(family):
    """reconstruct(x, keep=k) = the layers above L - k from q(z|x) (forward's q-layers with
    prior_layers = L - k), the rest from the prior: catches an off-by-one in keep."""
    model, x = family
    L = model.n_layers
    g = lambda: torch.Generator().manual_seed(8)  # noqa: E731
    for keep in range(1, L):
        torch.manual_seed(4)
        code = model.encode(x)
        upper = {n: p.draw for n, p in code.groups.items() if model.group_layer(n) > L - keep}
        assert {model.group_layer(n) for n in upper} == set(range(L - keep + 1, L + 1))
        torch.manual_seed(4)
        got = model.reconstruct(x, keep=keep, generator=g())
        torch.testing.assert_close(got.x_params, model.decode(upper, generator=g()).x_params)
        with torch.no_grad():
            q_layers = model(x, prior_layers=L - keep).posteriors
        assert set(q_layers) == set(upper)


def test_interpolation_ends_are_the_codes_of_the_two_images(family):
    model, x = family
    x_a, x_b = x[:2], x[2:4]
    for layer in (1, model.n_layers):
        line = model.interpolate(x_a, x_b, layer, steps=4, others="a")
        assert line.images.shape == (2, 4, *x.shape[1:])
        with torch.no_grad():   # step 0: x_a's own mean reconstruction
            start = model(x_a, posterior_mode="mean").x_params
        torch.testing.assert_close(line.x_params[:, 0], start, rtol=1e-5, atol=1e-5)
        code_b = model.encode(x_b, "mean").of_layer(layer)
        end = {**model.encode(x_a, "mean").draws(), **{g: p.draw for g, p in code_b.items()}}
        torch.testing.assert_close(line.x_params[:, -1], model.decode(end).x_params,
                                   rtol=1e-5, atol=1e-5)
    prior = model.interpolate(x_a, x_b, model.n_layers, steps=3, others="prior")
    assert not torch.allclose(prior.x_params, line.x_params[:, :3])


def test_bad_latents_are_named(family):
    model, x = family
    code = model.encode(x).draws()
    top = f"z{model.n_layers}"
    with pytest.raises(ValueError, match="unknown group 'z99'"):
        model.decode({**code, "z99": code[top]})
    with pytest.raises(ValueError, match=r"latents\['" + top + r"'\]: expected shape"):
        model.decode({top: code[top][:, :1]})
    with pytest.raises(ValueError, match="same number of rows"):
        model.decode({**code, top: code[top][:2]})
    with pytest.raises(ValueError, match="keep: expected 0.."):
        model.reconstruct(x, keep=model.n_layers + 1)
    with pytest.raises(ValueError, match="pass n"):
        model.decode({})
    if len(model.group_names) > model.n_layers:   # BIVA: a layer given in part
        with pytest.raises(ValueError, match="layer 1 is given in part"):
            model.decode({g: t for g, t in code.items() if g != "z1_td"})


def test_the_semi_supervised_model_says_the_latent_api_is_not_for_it(tmp_path):
    shutil.copytree(FIXTURES / "semi_supervised", tmp_path / "ssl")
    model, cfg, _ = load_trained(tmp_path / "ssl")
    x = torch.zeros(2, *cfg.model.input_shape)
    with pytest.raises(ValueError, match="posterior reads a class"):
        model.encode(x)
    with pytest.raises(ValueError, match="decoder reads a class"):
        model.decode({}, n=2)


def test_sample_from_images_writes_the_documented_figures(tmp_path):
    run = tmp_path / "biva"
    shutil.copytree(FIXTURES / "biva", run)
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((8, 8)) > 0.5).astype(np.uint8) * 255).save(
            folder / f"d{i}.png")
    out = tmp_path / "views"
    assert main(["sample", str(run), "--from", str(folder), "-n", "4", "--keep", "3,1,0",
                 "--interpolate-layers", "2", "--steps", "5", "--out", str(out)]) == 0
    record = json.loads((out / "latent_views.json").read_text())
    assert record["files"] == ["keep.png", "interpolate_layer2.png"]
    assert record["keep"] == [3, 1, 0] and record["images"] == [
        str(folder / f"d{i}.png") for i in range(4)]
    keep = Image.open(out / "keep.png")
    inter = Image.open(out / "interpolate_layer2.png")
    # 4 rows of 1 + 3 images; 2 pairs of 1 + 5 + 1 images.
    assert keep.width / keep.height == pytest.approx(4 / 4, rel=0.1)
    assert inter.width / inter.height == pytest.approx(7 / 2, rel=0.1)
    # The default folder is never an earlier one; a user's folder of other files is refused.
    assert main(["sample", str(run), "--from", str(folder), "-n", "2"]) == 0
    assert (run / "figures" / "latents" / "keep.png").is_file()
    assert main(["sample", str(run), "--from", str(folder), "-n", "2"]) == 0
    assert (run / "figures" / "latents_2" / "keep.png").is_file()
    assert main(["sample", str(run), "--from", str(folder), "--out", str(folder)]) == 2
    assert main(["sample", str(run), "--from", str(folder), "--keep", "9"]) == 2
