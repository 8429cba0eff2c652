"""Attacks on ``biva ood`` (a shipped model, its detector, an earlier output folder) and on
``biva ablation`` (a changed recipe over existing runs, a kill mid-run, a second writer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from faults import SHIPPED, changed, fill, mount_tmpfs, snapshot
from runner import BIVA, Attack, Result, run_process

OOD = ["ood", "--pretrained", "photos32", "--ood-data", "uniform", "--n-examples", "30",
       "--n-valid", "30", "--bootstrap", "0", "--threads", "1", "--no-progress"]
TINY = ["--config", "digits", "--variants", "lvae,biva", "--seeds", "0", "--steps", "6",
        "--samples", "3", "--eval-examples", "40", "--threads", "1"]
for _s in ("train.eval_every=2", "train.checkpoint_every=2", "train.log_every=2",
           "train.finetune_steps=0", "model.filters=[8]", "model.blocks=1",
           "train.batch_size=16"):
    TINY += ["--set", _s]


def _earlier_set(work: Path, out: Path) -> list[str]:
    """An earlier complete ``biva ood`` set in ``out``; its snapshot kept for the check."""
    first = run_process([*OOD, "--out", str(out)], work, 600)
    assert first.rc == 0, first.err
    work.joinpath(".out_path").write_text(str(out))
    work.joinpath(".before.json").write_text(json.dumps(snapshot(out)))
    return [*OOD, "--out", str(out), "--seed", "1"]


def _one_complete_set(work: Path, result: Result) -> str | None:
    """The folder holds the earlier set byte-identical, or a new set with the same files."""
    out = Path(work.joinpath(".out_path").read_text())
    before = json.loads(work.joinpath(".before.json").read_text())
    if result.rc == 0:
        now = snapshot(out)
        return None if set(now) == set(before) else f"files differ: {set(now) ^ set(before)}"
    return changed(before, out)


def _full_disk(work: Path) -> list[str]:
    mount_tmpfs(work / "disk", "20m")
    argv = _earlier_set(work, work / "disk" / "o")
    fill(work / "disk", 40_000)
    return argv


def _shipped_detector(work: Path, result: Result) -> str | None:
    copy = work / "runs" / "pretrained" / "photos32" / "detector.json"
    same = copy.read_bytes() == (SHIPPED / "photos32" / "detector.json").read_bytes()
    return None if same else "the shipped detector was replaced by the refit"


def _someone_elses(work: Path) -> list[str]:
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("keep me")
    return [*OOD, "--out", str(work / "mine")]


def _concurrent(argv_for) -> object:
    """A setup that starts a first process on ``argv_for(work)``, waits until it runs, and
    returns the same arguments for the second."""
    def setup(work: Path) -> list[str]:
        argv = argv_for(work)
        first = subprocess.Popen([BIVA, *argv], cwd=work, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(12)
        work.joinpath(".first.pid").write_text(str(first.pid))
        return argv
    return setup


def _concurrent_check(work: Path, result: Result) -> str | None:
    pid = int(work.joinpath(".first.pid").read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "the first process had ended before the second started (no contention tested)"
    return None if "pid" in result.err else "the refusal does not name the holder"


def _summary_whole(work: Path, result: Result) -> str | None:
    """Both processes done: one summary of every run (parallel workers are allowed)."""
    pid = int(work.joinpath(".first.pid").read_text())
    deadline = time.monotonic() + 300
    while os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)     # the first process is this one's child: reap it
    table = json.loads((work / "abl" / "table.json").read_text())
    if table.get("missing_runs") or len(table["rows"]) != 2:
        return f"summary of {len(table['rows'])} variants, missing {table.get('missing_runs')}"
    return None


def _changed_recipe(killed: bool, change: str) -> object:
    def setup(work: Path) -> list[str]:
        argv = ["ablation", "--out", str(work / "abl"), *TINY]
        if killed:
            proc = subprocess.Popen([BIVA, *argv], cwd=work, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(14)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            assert run_process(argv, work, 600).rc == 0
        work.joinpath(".before.json").write_text(json.dumps(snapshot(work / "abl")))
        return [*argv, "--set", change]

    def check(work: Path, result: Result) -> str | None:
        return changed(json.loads(work.joinpath(".before.json").read_text()), work / "abl")
    state = "half-trained (kill -9)" if killed else "finished"
    return Attack(f"--set {change} on {state} runs", "ablation",
                  "a changed recipe over existing runs", setup, check=check, timeout=300)


def _resume_after_kill(work: Path) -> list[str]:
    argv = ["ablation", "--out", str(work / "abl"), *TINY]
    proc = subprocess.Popen([BIVA, *argv], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(14)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return argv


def attacks() -> list[Attack]:
    """``biva ood``'s and ``biva ablation``'s attacks."""
    return [
        Attack("ood --pretrained photos32, default --out", "ood", "a refit in the shipped copy",
               lambda w: OOD, expect=(0,), check=_shipped_detector, timeout=600),
        Attack("ood onto a full 20 MB tmpfs over an earlier set", "ood", "disk full",
               _full_disk, check=_one_complete_set, timeout=900),
        Attack("SIGTERM in ood over an earlier set", "ood", "a scheduler's signal",
               lambda w: _earlier_set(w, w / "o"), expect=(0, 143, -15, 130),
               signal_after=20, check=_one_complete_set, timeout=900),
        Attack("ood --out someone else's folder", "ood", "a folder biva did not write",
               _someone_elses, check=lambda w, r: None if (w / "mine" / "thesis.tex")
               .read_text() == "keep me" else "the user's file changed"),
        Attack("two ood into one --out", "ood", "a second writer",
               _concurrent(lambda w: [*OOD, "--out", str(w / "o")]),
               check=_concurrent_check, timeout=300),
        Attack("ood --n-examples -1", "ood", "a count below one",
               lambda w: [*OOD, "--n-examples", "-1"]),
        Attack("ood --samples 0", "ood", "a count below one", lambda w: [*OOD, "--samples", "0"]),
        _changed_recipe(False, "train.lr=0.05"), _changed_recipe(False, "model.blocks=2"),
        _changed_recipe(True, "train.lr=0.05"),
        Attack("ablation killed (-9), then the same command", "ablation", "kill -9 mid-run",
               _resume_after_kill, expect=(0,), timeout=600,
               check=lambda w, r: None if (w / "abl" / "table.json").is_file() else "no table"),
        Attack("two ablations into one --out (parallel workers)", "ablation",
               "a second process on the same runs and summary",
               _concurrent(lambda w: ["ablation", "--out", str(w / "abl"), *TINY]),
               expect=(0,), check=_summary_whole, timeout=300),
        Attack("ablation --seeds a", "ablation", "a bad list",
               lambda w: ["ablation", "--out", str(w / "abl"), *TINY, "--seeds", "a"]),
        Attack("ablation --variants nonsense", "ablation", "an unknown variant",
               lambda w: ["ablation", "--out", str(w / "abl"), *TINY, "--variants", "xyz"]),
        Attack("ablation --steps -1", "ablation", "a count below one",
               lambda w: ["ablation", "--out", str(w / "abl"), *TINY, "--steps", "-1"]),
    ]
