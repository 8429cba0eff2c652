"""Tests for biva.utils.jsonl: crash-tolerant JSON Lines metric logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biva.utils.jsonl import JsonlError, append_jsonl, read_jsonl, truncate_jsonl_after_step


def _strict(line: str) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


def test_round_trip_with_tensors_numpy_and_nonfinite(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "metrics.jsonl"  # parent is created
    append_jsonl(log, {"step": 1, "loss": torch.tensor(0.5), "acc": np.float32(0.25),
                       "n": np.int64(3), "count": torch.tensor(4), "kl": torch.tensor([1.0, 2.0]),
                       "hist": np.array([1, 2]), "ok": True, "tag": "train"})
    append_jsonl(log, {"step": 2, "loss": float("nan"), "grad": float("inf"),
                       "low": -math.inf, "nested": {"x": [float("nan")]}})
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        _strict(line)  # every line is strict JSON
    assert _strict(lines[1])["loss"] == "NaN" and _strict(lines[1])["grad"] == "Infinity"

    first, second = read_jsonl(log)
    assert first == {"step": 1, "loss": 0.5, "acc": 0.25, "n": 3, "count": 4, "kl": [1.0, 2.0],
                     "hist": [1, 2], "ok": True, "tag": "train"}
    assert isinstance(first["loss"], float) and isinstance(first["count"], int)
    assert math.isnan(second["loss"]) and second["grad"] == math.inf and second["low"] == -math.inf
    assert math.isnan(second["nested"]["x"][0])
    assert read_jsonl(log, decode_nonfinite=False)[1]["loss"] == "NaN"


def test_unsupported_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"record\.bad"):
        append_jsonl(tmp_path / "m.jsonl", {"bad": object()})
    with pytest.raises(TypeError):
        append_jsonl(tmp_path / "m.jsonl", [1, 2])  # type: ignore[arg-type]
    assert not (tmp_path / "m.jsonl").exists()


def test_truncated_last_line_is_tolerated_and_repaired(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    append_jsonl(log, {"step": 1, "loss": 1.0})
    append_jsonl(log, {"step": 2, "loss": 0.9})
    with open(log, "ab") as f:
        f.write(b'{"step": 3, "lo')  # crash mid-write
    with pytest.warns(RuntimeWarning, match=r"m\.jsonl:3: ignoring truncated final line"):
        assert [r["step"] for r in read_jsonl(log)] == [1, 2]
    append_jsonl(log, {"step": 3, "loss": 0.8})  # must not glue onto the fragment
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]


def test_truncated_multibyte_utf8_tail_is_tolerated(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    append_jsonl(log, {"step": 1, "note": "ok"})
    with open(log, "ab") as f:
        f.write('{"note": "é'.encode()[:-1])
    with pytest.warns(RuntimeWarning):
        assert read_jsonl(log) == [{"step": 1, "note": "ok"}]


def test_complete_final_line_without_newline_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"step": 1}\n{"step": 2}')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
    append_jsonl(log, {"step": 3})
    assert log.read_bytes() == b'{"step": 1}\n{"step": 2}\n{"step":3}\n'


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(JsonlError, match=r"m\.jsonl:3: corrupt line"):
        read_jsonl(log)
    log.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"m\.jsonl:2: expected a JSON object, found list"):
        read_jsonl(log)


def test_truncate_after_step(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    for s in range(1, 6):
        append_jsonl(log, {"step": s, "loss": 1.0 / s})
        if s == 2:
            append_jsonl(log, {"event": "eval started"})
    with open(log, "ab") as f:
        f.write(b'{"step": 6, "lo')
    original_lines = log.read_bytes().splitlines(keepends=True)
    with pytest.warns(RuntimeWarning):
        assert truncate_jsonl_after_step(log, 3) == 2
    assert log.read_bytes() == b"".join(original_lines[:4])  # kept lines byte-identical
    assert [r.get("step") for r in read_jsonl(log)] == [1, 2, None, 3]
    assert truncate_jsonl_after_step(log, 3) == 0
    assert truncate_jsonl_after_step(tmp_path / "missing.jsonl", 3) == 0


def test_truncate_rejects_non_numeric_step(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": "x"}\n')
    with pytest.raises(JsonlError, match=r"m\.jsonl:1: 'step' is 'x'"):
        truncate_jsonl_after_step(log, 1)
