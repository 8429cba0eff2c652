"""Attacks on the pretrained surface (``--pretrained NAME|FOLDER``): a user's run in the way,
card names and digests that point outside, device files and FIFOs, huge or damaged files,
non-finite weights, a config edited to a huge model, corrupt stamps, shadowing folders."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from faults import changed, copy_model, edit_card, sign, snapshot
from runner import Attack, Result
from safetensors.torch import load_file, save_file

SAMPLE = ["sample", "-n", "2", "--threads", "1"]


def _users_run(work: Path) -> list[str]:
    run = work / "runs" / "pretrained" / "digits"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "config.json").write_text('{"mine": true}')
    (run / "checkpoints" / "best" / "meta.json").write_text('{"step": 7}')
    work.joinpath(".before.json").write_text(json.dumps(snapshot(run)))
    return [*SAMPLE, "--pretrained", "digits"]


def _run_untouched(work: Path, result: Result) -> str | None:
    before = json.loads(work.joinpath(".before.json").read_text())
    return changed(before, work / "runs" / "pretrained" / "digits")


def _bad_name(name) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = copy_model("digits", work / "mine")
        sign(folder, name=name)
        return [*SAMPLE, "--pretrained", str(folder)]

    def check(work: Path, result: Result) -> str | None:
        made = [p for p in (work / "runs", work.parent / "x", Path("/abs/path")) if p.exists()]
        return f"created {made}" if made else None
    return Attack(f"card name {name!r}", "pretrained", "card name points outside runs/pretrained",
                  setup, check=check)


def _digests(value, label: str) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = copy_model("digits", work / "mine")
        edit_card(folder, sha256=value)
        return [*SAMPLE, "--pretrained", str(folder)]

    def check(work: Path, result: Result) -> str | None:
        leaked = "hostname" in result.err and "vouches" not in result.err
        return "an outside file was hashed and named" if leaked else None
    return Attack(f"card sha256 {label}", "pretrained", "card digests outside or mistyped",
                  setup, check=check)


def _special(target: str, kind: str) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = copy_model("digits", work / "mine")
        path = folder / target
        if target != "zero.bin":
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(f"/dev/{kind}", path)
        if target == "zero.bin":
            card = json.loads((folder / "card.json").read_text())
            card["sha256"]["zero.bin"] = "0" * 64
            (folder / "card.json").write_text(json.dumps(card))
        return [*SAMPLE, "--pretrained", str(folder)]
    return Attack(f"{target} -> {kind}", "pretrained", "device file or FIFO in a model folder",
                  setup, timeout=60, max_mb=1500)


def _huge_config(work: Path) -> list[str]:
    folder = copy_model("digits", work / "mine")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["filters"] = [3000]
    (folder / "config.json").write_text(json.dumps(cfg))
    sign(folder)
    return [*SAMPLE, "--pretrained", str(folder)]


def _nonfinite(work: Path) -> list[str]:
    folder = copy_model("digits", work / "mine")
    w = load_file(folder / "model.safetensors")
    name = next(k for k, v in w.items() if v.is_floating_point() and v.numel() > 3000)
    w[name] = w[name].clone()
    w[name].view(-1)[:2500] = float("nan")
    save_file(w, str(folder / "model.safetensors"))
    sign(folder)
    return [*SAMPLE, "--pretrained", str(folder)]


def _damaged(how: str) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = copy_model("digits", work / "mine")
        path = folder / "model.safetensors"
        data = bytearray(path.read_bytes())
        if how == "header length 2^62":
            data[:8] = struct.pack("<Q", 2 ** 62)
        elif how == "garbage header":
            data[8:40] = b"\xff" * 32
        else:
            data = data[: len(data) // 2]
        path.write_bytes(bytes(data))
        sign(folder)
        return [*SAMPLE, "--pretrained", str(folder)]
    return Attack(f"weights: {how}", "pretrained", "damaged safetensors, card re-signed", setup)


def _stamp(content: str) -> Attack:
    def setup(work: Path) -> list[str]:
        run = work / "runs" / "pretrained" / "digits"
        run.mkdir(parents=True)
        (run / "pretrained.json").write_text(content)
        work.joinpath(".before.json").write_text(json.dumps(snapshot(run)))
        return [*SAMPLE, "--pretrained", "digits"]

    def check(work: Path, result: Result) -> str | None:
        if "pretrained.json" not in result.err:
            return "the error does not name pretrained.json"
        return _run_untouched(work, result)
    return Attack(f"stamp {content!r}", "pretrained", "corrupt pretrained.json stamp", setup,
                  check=check)


def _shadow(work: Path) -> list[str]:
    (work / "digits").mkdir()
    (work / "digits" / "note.txt").write_text("my own digits")
    return [*SAMPLE, "--pretrained", "digits"]


def _shadow_check(work: Path, result: Result) -> str | None:
    if [p.name for p in (work / "digits").iterdir()] != ["note.txt"]:
        return "the local folder ./digits was written"
    stamp = work / "runs" / "pretrained" / "digits" / "pretrained.json"
    return None if stamp.is_file() else "the shipped model was not the one used"


def _big_card(work: Path) -> list[str]:
    folder = copy_model("digits", work / "mine")
    with open(folder / "card.json", "ab") as f:
        f.truncate(200 * 2 ** 20)       # a sparse 200 MB file: reading it whole costs memory
    return [*SAMPLE, "--pretrained", str(folder)]


def _card_text(text: str, label: str) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = copy_model("digits", work / "mine")
        (folder / "card.json").write_text(text)
        return [*SAMPLE, "--pretrained", str(folder)]
    return Attack(f"card.json {label}", "pretrained", "malformed card", setup)


def _card_dir(work: Path) -> list[str]:
    folder = copy_model("digits", work / "mine")
    (folder / "card.json").unlink()
    (folder / "card.json").mkdir()
    return [*SAMPLE, "--pretrained", str(folder)]


def attacks() -> list[Attack]:
    """The pretrained surface's attacks."""
    out = [Attack("a user's run at runs/pretrained/digits", "pretrained",
                  "the card's own training command wrote there", _users_run,
                  check=_run_untouched)]
    out += [_bad_name(n) for n in ("../../x", "/abs/path", "", ".", "..", 12345, "a/b")]
    out += [_digests({"../../../../etc/hostname": "0" * 64}, "outside key"),
            _digests({"config.json": "0" * 64}, "without the weights"),
            _digests("0" * 64, "a string"), _digests([], "a list"), _digests(None, "null")]
    out += [_special(t, k) for t in ("card.json", "config.json", "model.safetensors")
            for k in ("zero", "fifo")]
    out += [_special("model.safetensors", "urandom"), _special("zero.bin", "zero")]
    out += [Attack("config edited to filters [3000], re-signed", "pretrained",
                   "a 2 KB config that builds an 11 GB model", _huge_config, max_mb=1500),
            Attack("2,500 NaN weights, re-signed", "pretrained", "non-finite weights",
                   _nonfinite)]
    out += [_damaged(h) for h in ("header length 2^62", "garbage header", "truncated")]
    out += [_stamp("[1, 2]"), _stamp("{not json")]
    out += [Attack("local ./digits folder", "pretrained", "a folder named like a shipped model",
                   _shadow, expect=(0,), check=_shadow_check),
            Attack("card.json of 200 MB", "pretrained", "a huge card", _big_card,
                   max_mb=1000),
            _card_text("{not json", "not JSON"), _card_text("[]", "a list"),
            Attack("card.json a folder", "pretrained", "malformed card", _card_dir),
            Attack("--pretrained no-such-model", "pretrained", "an unknown name",
                   lambda work: [*SAMPLE, "--pretrained", "no-such-model"])]
    return out

