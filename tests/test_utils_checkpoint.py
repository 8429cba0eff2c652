"""Tests for biva.utils.checkpoint: safetensors + JSON checkpoints that never execute code."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pathlib
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from biva.utils import checkpoint as ckpt_mod
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

PICKLE_REFUSAL = re.escape(
    "refusing to load a pickle-based file; biva checkpoints are safetensors + JSON")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)  # int64 buffer num_batches_tracked
        self.b = nn.Linear(3, 4)
        self.b.weight = nn.Parameter(self.a.weight.t().detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.bn(self.a(x))))


def _save_simple(path: Path) -> Path:
    return save_checkpoint(path, tensors={"model": {"w": torch.arange(6.0).reshape(2, 3)}},
                           state={"step": 1})


# ----------------------------------------------------------------------------- round trips


def test_round_trip_of_awkward_tensors_and_state(tmp_path: Path) -> None:
    base = torch.randn(4, 5)
    tensors = {
        "model": {
            "weight": base,
            "transposed": base.t(),  # non-contiguous, shares storage with "weight"
            "row": base[1],  # a view into the same storage
            "empty": torch.empty(0, 3),
            "scalar": torch.tensor(2.5, dtype=torch.float64),
            "mask": torch.tensor([True, False, True]),
            "count": torch.tensor([1, -2, 3], dtype=torch.int64),
            "half": torch.randn(3).to(torch.bfloat16),
            "grad": torch.randn(2, requires_grad=True),
        },
        "ema": {"weight": base * 2},
        "nothing": {},
    }
    state = {
        "step": 1234, "epoch": 3, "best": math.inf, "worst": -math.inf, "nan": math.nan,
        "betas": (0.9, 0.999), "by_layer": {0: "a", 1: [1.5, None, True]},
        "config": {"model": {"latents": [4, 2]}, "$meta": "user key that looks like a tag"},
        "name": "run",
    }
    path = save_checkpoint(tmp_path / "step_000001234", tensors=tensors, state=state)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "tensors.safetensors"]

    groups, loaded = load_checkpoint(path)
    assert list(groups) == ["model", "ema", "nothing"]
    assert list(groups["model"]) == list(tensors["model"])
    for g, entries in tensors.items():
        for k, t in entries.items():
            out = groups[g][k]
            assert out.dtype == t.dtype and out.shape == t.shape, (g, k)
            assert torch.equal(out, t.detach()), (g, k)
    assert groups["nothing"] == {}

    assert math.isnan(loaded.pop("nan"))
    state.pop("nan")
    assert loaded == state
    assert isinstance(loaded["betas"], tuple)
    assert list(loaded["by_layer"]) == [0, 1]


def test_meta_json_contents(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c", tensors={"model": {"w": torch.ones(2)}},
                           state={"step": 5, "metrics": {"loss": 0.5}})
    meta = json.loads((path / "meta.json").read_text())  # strict JSON: no NaN tokens
    assert meta["format"] == "biva-checkpoint"
    assert meta["format_version"] == 2
    assert meta["groups"] == {"model": ["w"]}
    digest = hashlib.sha256((path / "tensors.safetensors").read_bytes()).hexdigest()
    assert meta["tensors_sha256"] == digest
    assert meta["state"] == {"step": 5, "metrics": {"loss": 0.5}}  # plain data stays readable


def test_map_location(tmp_path: Path) -> None:
    path = _save_simple(tmp_path / "c")
    groups, _ = load_checkpoint(path, map_location="meta")
    assert groups["model"]["w"].device.type == "meta"
    groups, _ = load_checkpoint(str(path), map_location=torch.device("cpu"))
    assert groups["model"]["w"].device.type == "cpu"


def test_state_with_tensor_or_unknown_object_is_rejected_without_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['x'\] is a tensor"):
        save_checkpoint(tmp_path / "c", tensors={}, state={"x": torch.ones(1)})
    with pytest.raises(TypeError, match=r"state\['x'\]\[0\]: cannot store a set"):
        save_checkpoint(tmp_path / "c", tensors={}, state={"x": [{1}]})
    with pytest.raises(TypeError, match="not a tensor"):
        save_checkpoint(tmp_path / "c", tensors={"m": {"w": 1.0}}, state={})
    with pytest.raises(ValueError, match="group name"):
        save_checkpoint(tmp_path / "c", tensors={"a/b": {}}, state={})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save_simple(tmp_path / "c")

    def broken_save_file(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tensors={"model": {"w": torch.zeros(1)}}, state={"step": 2})
    monkeypatch.undo()
    groups, state = load_checkpoint(path)
    assert state == {"step": 1} and groups["model"]["w"].shape == (2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_overwrite_existing_checkpoint(tmp_path: Path) -> None:
    path = _save_simple(tmp_path / "c")
    save_checkpoint(path, tensors={"model": {"v": torch.zeros(2)}}, state={"step": 2})
    groups, state = load_checkpoint(path)
    assert state == {"step": 2} and list(groups["model"]) == ["v"]


# ----------------------------------------------------------------------------- flatten


def test_flatten_keeps_int_keys_tuples_and_special_values() -> None:
    obj = {
        "state": {0: {"step": torch.tensor(3.0), "buf": torch.ones(2)}, 1: {}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "foreach": None,
                          "eps": math.inf, "name": "g"}],
        "clash": {0: torch.zeros(1), "0": torch.ones(1)},
        "$flat": "a user key equal to the tag",
        "nested": [[torch.full((1,), 7.0)], (1, (2, 3))],
    }
    tensors, skeleton = flatten_state_dict(obj)
    assert set(tensors) == {"state.0.step", "state.0.buf", "clash.0", "clash.0#1", "nested.0.0"}
    json.dumps(skeleton, allow_nan=False)  # the skeleton is strict JSON
    rebuilt = unflatten_state_dict(tensors, json.loads(json.dumps(skeleton)))
    assert list(rebuilt["state"]) == [0, 1]
    assert rebuilt["param_groups"][0]["betas"] == (0.9, 0.99)
    assert rebuilt["param_groups"][0]["eps"] == math.inf
    assert torch.equal(rebuilt["clash"][0], torch.zeros(1))
    assert torch.equal(rebuilt["clash"]["0"], torch.ones(1))
    assert rebuilt["$flat"] == "a user key equal to the tag"
    assert rebuilt["nested"][1] == (1, (2, 3))
    assert torch.equal(rebuilt["nested"][0][0], torch.full((1,), 7.0))


def test_unflatten_with_missing_tensor_fails() -> None:
    tensors, skeleton = flatten_state_dict({"a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="missing tensor 'a'"):
        unflatten_state_dict({}, skeleton)


def test_adamax_state_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adamax(model.parameters(), lr=0.01, betas=(0.8, 0.95), weight_decay=0.01)
    data = torch.randn(16, 4)

    def step(m: nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(data).pow(2).mean().backward()
        o.step()

    for _ in range(3):
        step(model, opt)

    opt_tensors, opt_skeleton = flatten_state_dict(opt.state_dict())
    path = save_checkpoint(tmp_path / "step_000000003",
                           tensors={"model": model.state_dict(), "optimizer": opt_tensors},
                           state={"step": 3, "optimizer": opt_skeleton})
    groups, state = load_checkpoint(path)

    model2 = Net()
    model2.load_state_dict(groups["model"])
    opt2 = torch.optim.Adamax(model2.parameters(), lr=0.5)
    restored = unflatten_state_dict(groups["optimizer"], state["optimizer"])
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    assert restored["state"].keys() == original["state"].keys()
    for i, s in original["state"].items():
        assert s.keys() == restored["state"][i].keys()
        for name, value in s.items():
            assert torch.equal(value, restored["state"][i][name]), (i, name)
    opt2.load_state_dict(restored)

    for _ in range(3):
        step(model, opt)
        step(model2, opt2)
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p1, p2)


# ----------------------------------------------------------------------------- refusals


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")
    path = _save_simple(tmp_path / "c")
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing checkpoint file .*meta\.json"):
        load_checkpoint(path)
    path = _save_simple(tmp_path / "d")
    (path / "tensors.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing checkpoint file .*tensors\.safetensors"):
        load_checkpoint(path)


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c", tensors={"model": {"w": torch.zeros(64)}},
                           state={"step": 1})
    f = path / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01  # inside the tensor payload: still a structurally valid file
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tampered or corrupt"):
        load_checkpoint(path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = _save_simple(tmp_path / "c")
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown checkpoint format version 99"):
        load_checkpoint(path)


def test_garbage_files_are_refused(tmp_path: Path) -> None:
    path = _save_simple(tmp_path / "c")
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"meta\.json: not valid JSON"):
        load_checkpoint(path)
    path = _save_simple(tmp_path / "d")
    (path / "tensors.safetensors").write_bytes(b"hello world, definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(path)


class _TouchOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _SystemOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("payload_cls", [_TouchOnLoad, _SystemOnLoad])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, payload_cls: type,
                                                     protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": payload_cls(marker)}, protocol=protocol)
    assert payload[:1] == b"\x80"

    path = _save_simple(tmp_path / "c")  # valid meta.json, poisoned tensors file
    (path / "tensors.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSAL):
        load_checkpoint(path)

    (path / "meta.json").write_bytes(payload)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSAL):
        load_checkpoint(path)

    lone = tmp_path / "model.pkl"
    lone.write_bytes(payload)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSAL):
        load_checkpoint(lone)
    assert not marker.exists()


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_torch_save_file_is_refused(tmp_path: Path, zipfile_format: bool) -> None:
    obj = {"w": torch.ones(3)}
    path = _save_simple(tmp_path / "c")
    torch.save(obj, path / "tensors.safetensors", _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSAL):
        load_checkpoint(path)
    pt = tmp_path / "model.pt"
    torch.save(obj, pt, _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSAL):
        load_checkpoint(pt)


def test_loading_never_calls_torch_load_or_pickle(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save_simple(tmp_path / "c")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unsafe deserializer called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    groups, state = load_checkpoint(path)
    assert state == {"step": 1}


def test_header_length_starting_with_0x80_is_not_mistaken_for_pickle(tmp_path: Path) -> None:
    # safetensors pads its header to a multiple of 8 bytes; find tensor names that make the
    # header 128 + 256 * k bytes long, so the file's first byte is 0x80 like a pickle's.
    for n in range(1, 200):
        path = save_checkpoint(tmp_path / "c", tensors={"m": {"x" * n: torch.ones(1)}},
                               state={})
        if (path / "tensors.safetensors").read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.skip("could not construct a header length starting with 0x80")
    groups, _ = load_checkpoint(path)
    assert torch.equal(groups["m"]["x" * n], torch.ones(1))


# ----------------------------------------------------------------------------- run-dir layout


def test_list_latest_and_prune(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert list_checkpoints(run) == [] and latest_checkpoint(run) is None
    steps = [5, 100, 1_000_000_000, 20, 999_999_999]
    for s in steps:
        save_checkpoint(checkpoint_path(run, s), tensors={}, state={"step": s})
    (run / "checkpoints" / "step_000000007").mkdir()  # incomplete: no meta.json
    (run / "checkpoints" / "notes.txt").write_text("x")
    assert checkpoint_path(run, 20).name == "step_000000020"
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == sorted(steps)
    assert latest_checkpoint(run) == checkpoint_path(run, 1_000_000_000)

    (run / "checkpoints" / "best").symlink_to("step_000000020")
    removed = prune_checkpoints(run, keep_last=2, protect=(checkpoint_path(run, 5),))
    assert sorted(removed) == [checkpoint_path(run, 100)]
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == [5, 20, 999_999_999,
                                                                 1_000_000_000]
    assert load_checkpoint(run / "checkpoints" / "best")[1] == {"step": 20}
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())

    prune_checkpoints(run, keep_last=1)
    # The newest and "best" survive.
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == [20, 1_000_000_000]
    for bad in (0, -1):   # 0 would delete the checkpoint just written
        with pytest.raises(ValueError, match=">= 1"):
            prune_checkpoints(run, keep_last=bad)
    assert latest_checkpoint(run) == checkpoint_path(run, 1_000_000_000)


def test_save_with_keep_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    best = checkpoint_path(run, 1)
    for s in range(1, 6):
        save_checkpoint(checkpoint_path(run, s), tensors={}, state={"step": s}, keep_last=2)
        if s == 1:
            (run / "checkpoints" / "best").symlink_to(best.name)
    assert [p.name for p in list_checkpoints(run)] == [
        "step_000000001", "step_000000004", "step_000000005"]


def test_state_dict_copy_is_independent(tmp_path: Path) -> None:
    model = Net()
    sd = copy.deepcopy(model.state_dict())
    path = save_checkpoint(tmp_path / "c", tensors={"model": model.state_dict()}, state={})
    with torch.no_grad():
        model.a.weight.add_(1.0)  # mutating after save must not affect the checkpoint
    groups, _ = load_checkpoint(path)
    assert torch.equal(groups["model"]["a.weight"], sd["a.weight"])


def test_edited_metadata_is_refused_and_version_1_still_loads(tmp_path: Path) -> None:
    """meta.json is covered by its own digest: an edited step (which would truncate the
    metrics log on resume) is refused; checkpoints from before the digest still load."""
    path = save_checkpoint(tmp_path / "c", tensors={"model": {"w": torch.ones(2)}},
                           state={"step": 5})
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    edited = json.loads(json.dumps(meta).replace('"step": 5', '"step": 1'))
    assert edited != meta
    meta_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"meta\.json: metadata SHA-256 mismatch"):
        load_checkpoint(path)
    old = {k: v for k, v in meta.items() if k != "meta_sha256"}
    meta_path.write_text(json.dumps({**old, "format_version": 1}))
    assert load_checkpoint(path)[1]["step"] == 5
    meta_path.write_text(json.dumps(old))  # version 2 without its digest
    with pytest.raises(CheckpointError, match="metadata SHA-256 mismatch"):
        load_checkpoint(path)


def test_malformed_state_node_names_the_file(tmp_path: Path) -> None:
    """A malformed encoded node (here in a digest-free version-1 checkpoint) names meta.json."""
    from biva.utils.checkpoint import _STATE_TAG

    path = save_checkpoint(tmp_path / "c", tensors={"model": {"w": torch.ones(2)}},
                           state={"step": 5})
    meta = json.loads((path / "meta.json").read_text())
    meta.pop("meta_sha256")
    meta.update(format_version=1, state={"x": {_STATE_TAG: "float", "value": "sideways"}})
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"c/meta\.json: malformed 'float' node"):
        load_checkpoint(path)
