"""Tests for biva.utils.atomic: crash-safe file and directory replacement."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from biva.utils import atomic
from biva.utils.atomic import (
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


class Boom(Exception):
    pass


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_bytes_text_json(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "b", b"\x00\x01")
    atomic_write_text(tmp_path / "t", "héllo\r\n")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    atomic_write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t").read_bytes() == "héllo\r\n".encode()  # no newline translation
    text = (tmp_path / "j.json").read_text()
    # Insertion order by default: results list z1, z2, ..., z10 as built, not as strings sort.
    assert text == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert (tmp_path / "s.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert _names(tmp_path) == ["b", "j.json", "s.json", "t"]


def test_writer_raising_midway_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_open(target, "w") as f:
        f.write("new partial con")
        f.flush()
        raise Boom
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["f.txt"]


def test_failed_rename_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["f.bin"]


def test_unserializable_json_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"ok": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _names(tmp_path) == ["x.json"]


def test_nonfinite_json_is_written_as_strings_with_a_warning(tmp_path: Path) -> None:
    """A one-example evaluation has a NaN standard error: the file is still written, as
    strict JSON with the JSON Lines spellings, and the warning names the field."""
    target = tmp_path / "r.json"
    with pytest.warns(UserWarning, match=r"r\.json\.L_5_stderr.*r\.json\.x\[1\]"):
        atomic_write_json(target, {"L_5_stderr": float("nan"), "x": [1.0, float("-inf")],
                                   "y": float("inf")})
    assert json.loads(target.read_text()) == {"L_5_stderr": "NaN", "x": [1.0, "-Infinity"],
                                              "y": "Infinity"}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permissions_follow_umask_and_are_preserved(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        new = tmp_path / "new"
        atomic_write_text(new, "x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        os.chmod(new, 0o600)
        atomic_write_text(new, "y")
        assert stat.S_IMODE(new.stat().st_mode) == 0o600
    finally:
        os.umask(umask)


def test_atomic_directory_creates_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "ckpt"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".")
        (tmp / "a").write_text("1")
    assert _names(final) == ["a"]
    with atomic_directory(final) as tmp:
        (tmp / "b").write_text("2")
        assert (final / "a").exists()  # old content stays visible until the swap
    assert _names(final) == ["b"]
    assert _names(final.parent) == ["ckpt"]  # neither temp nor old directory left


def test_atomic_directory_failure_leaves_existing_untouched(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "a").write_text("old")
    with pytest.raises(Boom), atomic_directory(final) as tmp:
        (tmp / "a").write_text("new")
        raise Boom
    assert (final / "a").read_text() == "old"
    assert _names(tmp_path) == ["ckpt"]


def test_atomic_directory_restores_old_when_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "a").write_text("old")
    real_rename = os.rename

    def rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == final and ".tmp-" in Path(src).name:
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"), atomic_directory(final) as tmp:
        (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (final / "a").read_text() == "old"
    assert _names(tmp_path) == ["ckpt"]


def test_atomic_open_rejects_other_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_open(tmp_path / "x", "a"):
        pass


def test_a_sigterm_inside_deferred_is_raised_at_its_end_and_atomic_open_cleans_up(tmp_path):
    """A real SIGTERM to this process: outside deferred() it raises at once; inside, only
    when the block ends, so the descriptor a temporary is opened with is never owned twice
    (a SIGTERM between os.fdopen and the ownership hand-over gave `Bad file descriptor`,
    exit 2, in the suite). atomic_open then removes its temporary."""
    import signal

    from biva.utils.signals import Terminated, deferred, sigterm_unwinds

    reached, before = [], signal.getsignal(signal.SIGTERM)
    with sigterm_unwinds():
        with pytest.raises(Terminated):
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):      # the handler runs between bytecodes
                    reached.append(1)
        assert len(reached) == 1000
        (tmp_path / "out.txt").write_text("old")
        with pytest.raises(Terminated):
            with atomic_open(tmp_path / "out.txt") as f:
                f.write("new, half")
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    reached.append(2)
        assert len(reached) < 2000      # raised at once outside deferred()
    assert (tmp_path / "out.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert signal.getsignal(signal.SIGTERM) is before     # the handler is put back
