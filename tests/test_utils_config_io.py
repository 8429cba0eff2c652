"""Tests for biva.utils.config_io: dataclass <-> dict/JSON/YAML, overrides, error messages."""

# String annotations on purpose: from_dict must resolve them like in the real config modules.
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

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


class Act(enum.Enum):
    RELU = "relu"
    ELU = "elu"


@dataclass
class Encoder:
    widths: list[int] = field(default_factory=lambda: [32, 64])
    act: Act = Act.ELU


@dataclass
class Model:
    latents: tuple[int, ...] = (8, 4, 2)
    kernel: int | list[int] = 3
    betas: tuple[float, float] = (0.9, 0.999)
    variant: Literal["vae", "biva"] = "biva"
    encoder: Encoder = field(default_factory=Encoder)
    prior: Optional[Encoder] = None  # noqa: UP045 - Optional[...] must be supported too
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Train:
    name: str
    model: Model = field(default_factory=Model)
    lr: float = 1e-3
    epochs: int = 10
    amp: bool = False
    seed: Optional[int] = None  # noqa: UP045
    mix: list[float] = field(default_factory=lambda: [0.5, 0.5])
    out: Path = Path("runs")
    anything: Any = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs: expected an int >= 1, found {self.epochs!r}")


def _full_config() -> Train:
    return Train(
        name="exp",
        model=Model(latents=(16, 8), kernel=[3, 5], betas=(0.5, 0.9), variant="vae",
                    encoder=Encoder(widths=[1, 2, 3], act=Act.RELU),
                    prior=Encoder(widths=[7]), extra={"a": 1.5}),
        lr=0.01, epochs=3, amp=True, seed=7, mix=[0.25, 0.75], out=Path("x/y"),
        anything={"k": [1, 2]},
    )


# ----------------------------------------------------------------------------- round trips


def test_round_trip_through_dict_and_json() -> None:
    cfg = _full_config()
    data = to_dict(cfg)
    assert data["model"]["latents"] == [16, 8]  # tuples become lists
    assert data["model"]["encoder"]["act"] == "relu"
    assert data["out"] == "x/y"
    reloaded = from_dict(Train, json.loads(json.dumps(data)))
    assert reloaded == cfg
    assert isinstance(reloaded.model.latents, tuple)
    assert isinstance(reloaded.model.betas, tuple)
    assert isinstance(reloaded.lr, float)


def test_defaults_are_filled_and_ints_become_floats() -> None:
    cfg = from_dict(Train, {"name": "n", "lr": 1, "model": {"latents": [5]}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.model.latents == (5,)
    assert cfg.model.kernel == 3 and cfg.model.encoder == Encoder()
    assert cfg.mix == [0.5, 0.5]


def test_save_config_is_sorted_indented_json(tmp_path: Path) -> None:
    cfg = _full_config()
    target = tmp_path / "cfg.json"
    save_config(cfg, target)
    text = target.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert from_dict(Train, load_config_file(target)) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]  # no temp files left


def test_round_trip_of_the_project_model_config() -> None:
    config = pytest.importorskip("biva.config")
    cfg = config.ModelConfig()
    assert from_dict(config.ModelConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


# ----------------------------------------------------------------------------- errors


def test_error_names_nested_list_element() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(Train, {"name": "n", "model": {"latents": [1, 2, "a"]}})
    assert str(e.value) == "model.latents[2]: expected int, found 'a' (str)"
    assert e.value.path == "model.latents[2]"


def test_error_uses_caller_prefix() -> None:
    with pytest.raises(ConfigError, match=r"^cfg\.model\.latents: expected tuple\[int, \.\.\.\]"):
        from_dict(Train, {"name": "n", "model": {"latents": 3}}, path="cfg")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"name": "n", "epochs": True}, r"^epochs: expected int, found True \(bool\)$"),
        ({"name": "n", "epochs": 3.0}, r"^epochs: expected int, found 3\.0 \(float\)$"),
        ({"name": "n", "lr": "1e-3"}, r"^lr: expected float, found '1e-3' \(str\)$"),
        ({"name": "n", "amp": 1}, r"^amp: expected bool, found 1 \(int\)$"),
        ({"name": 5}, r"^name: expected str, found 5 \(int\)$"),
        ({"name": "n", "model": {"variant": "lvae"}},
         r"^model\.variant: expected one of 'vae', 'biva', found 'lvae' \(str\)$"),
        ({"name": "n", "model": {"betas": [0.9]}},
         r"^model\.betas: expected tuple\[float, float\] with 2 items, found \[0\.9\] \(list\) "
         r"with 1$"),
        ({"name": "n", "model": {"kernel": "x"}},
         r"^model\.kernel: expected int \| list\[int\], found 'x' \(str\)$"),
        ({"name": "n", "model": {"kernel": [3, "x"]}},
         r"^model\.kernel\[1\]: expected int, found 'x' \(str\)$"),
        ({"name": "n", "model": {"prior": {"widths": [1.5]}}},
         r"^model\.prior\.widths\[0\]: expected int, found 1\.5 \(float\)$"),
        ({"name": "n", "model": {"encoder": {"act": "tanh"}}},
         r"^model\.encoder\.act: expected one of 'relu', 'elu' \(Act\), found 'tanh' \(str\)$"),
        ({"name": "n", "model": {"extra": {"a": "b"}}},
         r"^model\.extra\.a: expected float, found 'b' \(str\)$"),
        ({"name": "n", "model": 3}, r"^model: expected a mapping for Model, found 3 \(int\)$"),
        ({"name": "n", "seed": "1"}, r"^seed: expected int \| None, found '1' \(str\)$"),
        ({}, r"^name: missing required field \(expected str\)$"),
    ],
)
def test_type_errors_name_path_expected_and_found(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Train, data)


def test_unknown_key_suggests_closest_and_lists_valid_fields() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(Train, {"name": "n", "model": {"lattents": [1]}})
    msg = str(e.value)
    assert msg.startswith("model.lattents: unknown field 'lattents' for Model")
    assert "did you mean 'latents'?" in msg
    assert "valid fields: latents, kernel, betas, variant, encoder, prior, extra" in msg


def test_several_unknown_keys_are_all_reported() -> None:
    with pytest.raises(ConfigError, match=r"also unknown: 'bar'"):
        from_dict(Train, {"name": "n", "foo": 1, "bar": 2})


def test_union_keeps_exact_type() -> None:
    assert from_dict(Train, {"name": "n", "model": {"kernel": 5}}).model.kernel == 5
    assert from_dict(Train, {"name": "n", "model": {"kernel": [5, 7]}}).model.kernel == [5, 7]
    assert from_dict(Train, {"name": "n", "seed": None}).seed is None


def test_validate_is_called_after_building() -> None:
    with pytest.raises(ConfigError, match=r"^epochs: expected an int >= 1, found 0$"):
        from_dict(Train, {"name": "n", "epochs": 0})


def test_from_dict_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})


# ----------------------------------------------------------------------------- files


def test_load_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("name: exp\nlr: 1e-3\nmodel:\n  latents: [4, 2]\n  variant: vae\n")
    data = load_config_file(y)
    assert data == {"name": "exp", "lr": 0.001, "model": {"latents": [4, 2], "variant": "vae"}}
    j = tmp_path / "c.json"
    j.write_text(json.dumps(data))
    assert load_config_file(j) == data
    empty = tmp_path / "empty.yml"
    empty.write_text("# nothing\n")
    assert load_config_file(empty) == {}


def test_yaml_scalars_follow_yaml_1_2(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("a: yes\nb: true\nc: 010\nd: 2.5e-4\ne: 2024-01-01\nf: .inf\n")
    assert load_config_file(y) == {"a": "yes", "b": True, "c": "010", "d": 2.5e-4,
                                   "e": "2024-01-01", "f": float("inf")}


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("bad.yaml", "a: [1, 2\nb: 3\n", r"bad\.yaml: invalid YAML"),
        ("bad.json", '{"a": 1,\n "b": }', r"bad\.json:2:\d+: invalid JSON"),
        ("dup.yaml", "a: 1\nb: 2\na: 3\n", r"dup\.yaml: invalid YAML.*duplicate key 'a'"),
        ("dup.json", '{"a": 1, "a": 2}', r"dup\.json: invalid JSON: duplicate key 'a'"),
        ("list.yaml", "- 1\n- 2\n", r"list\.yaml: expected a mapping at the top level, found list"),
        ("c.toml", "a = 1", r"c\.toml: unsupported config file type"),
    ],
)
def test_file_errors_name_the_file(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=re.compile(pattern, re.S)) as e:
        load_config_file(p)
    assert str(p) in str(e.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as e:
        load_config_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    y = tmp_path / "m.yaml"
    y.write_text("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n")
    assert load_config_file(y)["derived"] == {"x": 1, "y": 3}


def test_yaml_does_not_construct_python_objects(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    y = tmp_path / "evil.yaml"
    y.write_text(f"a: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib."
                 f"Path ['{marker}']]\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config_file(y)
    assert not marker.exists()


def test_load_config_prefixes_the_file(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("name: exp\nmodel: {latents: [1, a]}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: model\.latents\[1\]: expected int"):
        load_config(Train, y)
    cfg = load_config(Train, y, ["model.latents=[3, 2]", "lr=0.5"])
    assert cfg.model.latents == (3, 2) and cfg.lr == 0.5


# ----------------------------------------------------------------------------- overrides


def test_apply_overrides_parses_yaml_values() -> None:
    base = {"name": "n", "model": {"latents": [1]}}
    out = apply_overrides(base, [
        "epochs=3", "lr=0.5", "amp=true", "seed=null", "model.latents=[4, 2]",
        'name="quoted=name"', "model.encoder.widths=[8]", "model.extra.k=1e-2", "out=a/b",
        "model.variant= vae",
    ])
    assert out == {
        "name": "quoted=name", "epochs": 3, "lr": 0.5, "amp": True, "seed": None, "out": "a/b",
        "model": {"latents": [4, 2], "encoder": {"widths": [8]}, "extra": {"k": 0.01},
                  "variant": "vae"},
    }
    assert base == {"name": "n", "model": {"latents": [1]}}  # input untouched
    cfg = from_dict(Train, out)
    assert cfg.model.latents == (4, 2) and cfg.model.extra == {"k": 0.01}


@pytest.mark.parametrize("item", ["epochs", "=3", "a..b=1", ".a=1", "a.=1", " =1"])
def test_malformed_overrides(item: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, [item])


def test_override_through_a_scalar_and_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"lr is 0\.1 \(float\), not a mapping"):
        apply_overrides({"lr": 0.1}, ["lr.x=1"])
    with pytest.raises(ConfigError, match=r"invalid override 'a=\[1, 2'"):
        apply_overrides({}, ["a=[1, 2"])
    with pytest.raises(TypeError):
        apply_overrides({}, "a=1")  # type: ignore[arg-type]


def test_parse_override_value() -> None:
    assert parse_override_value("3") == 3
    assert parse_override_value("1e-3") == 0.001
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value("'3'") == "3"
    assert parse_override_value("") is None


# ----------------------------------------------------------------------------- bounds
def test_unbounded_config_values_are_refused_naming_the_file_and_key(tmp_path):
    """A 1 GB string was copied into config.json and every meta.json (3.1 GB after 10 steps);
    a 200,000-deep list ended in a bare 'maximum recursion depth exceeded'."""
    from biva.utils.config_io import MAX_CONFIG_BYTES, load_config_file

    big = tmp_path / "big.yaml"
    big.write_text("name: " + "x" * (MAX_CONFIG_BYTES + 1) + "\n")
    with pytest.raises(ConfigError, match=rf"{big}: a config file of [\d,]+ bytes; at most"):
        load_config_file(big)
    long = tmp_path / "long.yaml"
    long.write_text("model:\n  description: " + "y" * 5000 + "\n")
    with pytest.raises(ConfigError, match=rf"{long}: model.description: a string of 5,000"):
        load_config_file(long)
    deep = tmp_path / "deep.json"
    deep.write_text('{"train": {"adam_betas": ' + "[" * 200_000 + "]" * 200_000 + "}}")
    with pytest.raises(ConfigError, match=rf"{deep}: nested too deeply"):
        load_config_file(deep)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  latents: " + "[" * 40 + "1" + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match=rf"{nested}: model.latents.*nested deeper than 16"):
        load_config_file(nested)
    many = tmp_path / "many.json"
    many.write_text('{"model": {"latents": [' + ",".join(["1"] * 20_000) + "]}}")
    with pytest.raises(ConfigError, match=r"model.latents: a list of 20,000 items"):
        load_config_file(many)


def test_unbounded_override_values_are_refused_naming_the_key():
    from biva.utils.config_io import apply_overrides

    with pytest.raises(ConfigError, match=r"override data.path: .*a string of 5,000"):
        apply_overrides({}, ["data.path=" + "z" * 5000])


def test_config_errors_name_the_file(tmp_path, capsys):
    from biva.cli.main import main

    bad = tmp_path / "mine.yaml"
    bad.write_text("model: {preset: digits, blocks: 0}\n")
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}" in err and "model.blocks" in err, err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": {"variant": "bivaa"}}')
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'}" in err and "model.variant" in err, err
