"""The model config split by family (issue 39 item 3): ``model.variant`` picks
:class:`HierarchyConfig` (VAE, LVAE, LVAE+, BIVA) or :class:`TopDownConfig` (VDVAE-, NVAE-style),
each with its own fields and validation; every config written before the split still loads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from biva.config import (
    ConfigError,
    HierarchyConfig,
    ModelConfig,
    TopDownConfig,
    as_variant,
    load_run_config,
    preset,
    read_run_config,
    shipped_configs,
    topdown_equivalent,
)
from biva.utils.config_io import from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]
HIERARCHY_ONLY = {"latent_type", "latent_kernel", "kernels", "strides", "blocks", "biva_prior"}
TOPDOWN_ONLY = {"spec", "encoder_spec", "inner_width", "posterior_flows"}


def _committed_configs() -> list[str]:
    files = subprocess.run(["git", "ls-files", "*config.json"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return sorted(files)


def test_the_committed_configs_are_found():
    # Pretrained models, results and the family fixtures: the files the split must still read.
    found = _committed_configs()
    assert len(found) >= 19 and any("families/nvae" in f for f in found), found
    # Written before the split, they hold the other family's fields too (with values that
    # are not the defaults: the nvae fixture came from the digits config).
    nvae = json.loads((ROOT / "tests/fixtures/families/nvae/config.json").read_text())["model"]
    assert HIERARCHY_ONLY <= set(nvae) and nvae["blocks"] != HierarchyConfig().blocks
    biva = json.loads((ROOT / "tests/fixtures/families/biva/config.json").read_text())["model"]
    assert set(biva) & TOPDOWN_ONLY


@pytest.mark.parametrize("path", _committed_configs())
def test_every_committed_config_json_loads_as_its_family(path):
    raw = json.loads((ROOT / path).read_text())
    topdown = raw["model"]["variant"] in ("vdvae", "nvae")
    cfg = read_run_config(ROOT / path)
    family = TopDownConfig if topdown else HierarchyConfig
    assert type(cfg.model) is family
    own = {f.name for f in dataclasses.fields(family)}
    # Each field the family has keeps the file's value (lists as tuples); fields newer than
    # the file take their defaults.
    defaults = family(variant=raw["model"]["variant"])
    for name in own:
        value = raw["model"].get(name, getattr(defaults, name))
        assert getattr(cfg.model, name) == (tuple(value) if isinstance(value, list) else value)
    # Written again, only the family's own fields.
    assert set(to_dict(cfg)["model"]) == own


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads_as_its_family(name):
    cfg = load_run_config(name)
    assert type(cfg.model) is (TopDownConfig if cfg.model.topdown else HierarchyConfig)
    assert from_dict(type(cfg.model), to_dict(cfg.model)) == cfg.model


def test_model_config_is_the_union_chosen_by_variant():
    assert type(ModelConfig()) is HierarchyConfig           # "biva" when absent
    td = ModelConfig(variant="nvae", input_shape=(1, 8, 8), latents=(2,), filters=(8,),
                     spec="4x2,2x1", posterior_flows=2)
    assert type(td) is TopDownConfig and td.n_layers == 3 and td.posterior_flows == 2
    assert isinstance(td, ModelConfig)
    assert from_dict(ModelConfig, to_dict(td)) == td
    assert dataclasses.replace(td, posterior_flows=0).posterior_flows == 0


@pytest.mark.parametrize("values, needle", [
    ({"variant": "nvae", "spec": "4x1", "strides": (2,)}, "model.strides: not a field of "
                                                         "TopDownConfig"),
    ({"variant": "biva", "posterior_flows": 2}, "model.posterior_flows: not a field of "
                                                "HierarchyConfig"),
    ({"variant": "ladder"}, "model.variant: expected one of"),
])
def test_a_field_of_the_other_family_is_refused_by_name(values, needle):
    with pytest.raises(ConfigError, match=needle):
        ModelConfig(**values)


def test_a_variant_moved_across_families_by_replace_is_refused():
    with pytest.raises(ConfigError, match="for a HierarchyConfig .* as_variant"):
        dataclasses.replace(preset("digits"), variant="nvae").validate()


def test_as_variant_keeps_the_common_fields_and_takes_the_new_familys():
    base = preset("digits")
    td = as_variant(base, "vdvae", spec="4x1,1x1", filters=(8,))
    assert type(td) is TopDownConfig
    assert (td.input_shape, td.latents, td.dropout_q, td.likelihood) == (
        base.input_shape, base.latents, base.dropout_q, base.likelihood)
    assert as_variant(base, "lvae") == dataclasses.replace(base, variant="lvae")
    back = as_variant(td, "biva")
    assert type(back) is HierarchyConfig and back.blocks == HierarchyConfig().blocks


def test_topdown_equivalent_of_a_topdown_model_keeps_its_spec():
    nvae = topdown_equivalent(preset("digits"), "nvae")
    vdvae = topdown_equivalent(nvae, "vdvae")
    assert (vdvae.variant, vdvae.spec, vdvae.latents, vdvae.filters) == (
        "vdvae", nvae.spec, nvae.latents, nvae.filters)


def test_set_of_the_other_familys_field_is_refused_and_a_file_switch_is_not():
    # Switching a BIVA config to nvae keeps the file's stage fields out of the way...
    cfg = load_run_config("digits", ["model.variant=nvae", "model.spec=4x2,2x1",
                                     "model.latents=[2]", "model.filters=[8]"])
    assert type(cfg.model) is TopDownConfig and cfg.model.n_layers == 3
    # ... but a --set of a field the chosen family lacks would do nothing: refused.
    with pytest.raises(ConfigError, match=r"model.blocks: not a field of the nvae model .*"
                                          r"--set model.blocks would have no effect"):
        load_run_config("digits", ["model.variant=nvae", "model.spec=4x2,2x1",
                                   "model.latents=[2]", "model.filters=[8]", "model.blocks=1"])
    with pytest.raises(ConfigError, match="model.posterior_flows: not a field of the biva"):
        load_run_config("digits", ["model.posterior_flows=2"])


def test_each_family_validates_its_own_fields():
    with pytest.raises(ConfigError, match=r"model.kernels\[0\]: expected an odd"):
        dataclasses.replace(preset("digits"), kernels=(4,)).validate()
    with pytest.raises(ConfigError, match="model.spec: expected falling resolutions"):
        TopDownConfig(variant="vdvae", input_shape=(1, 8, 8), latents=(2,), filters=(8,),
                      spec="4x1,4x1").validate()
    with pytest.raises(ConfigError, match="model.filters: expected one positive width"):
        TopDownConfig(variant="vdvae", input_shape=(1, 8, 8), latents=(2,), filters=(8, 8),
                      spec="4x1").validate()
