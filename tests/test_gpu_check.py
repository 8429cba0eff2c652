"""The accelerator check's CPU dry run: every part runs and reports, so the script cannot rot
between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.extended
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), str(out),
                           "--device", "cpu", "--quick"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {r["part"]: r for r in records}
    ran = ["device_checks", "train_binary_b48", "eval_l1000", "sample", "timed_training",
           "eval_timed_l1", "eval_timed_l1000"]
    for name in ran:
        assert by[name]["rc"] == 0, (name, by[name].get("stderr_tail"))
    checks = {c["check"]: c for c in by["device_checks"]["records"]}
    assert set(checks) == {"channels_last", "bf16", "lk_fused", "ddp", "save_load"}
    assert all(c["ok"] for c in checks.values()), checks
    assert by["train_binary_b48"]["record"]["images_per_s"] > 0
    assert by["eval_l1000"]["record"]["speedup_vs_sequential"] > 0
    assert by["eval_timed_l1"]["record"]["n_examples"] == 50
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["amp_auto"] in ("bf16", "none")
    summary = (out / "summary.md").read_text()
    assert "channels_last ok" in summary and "L_1" in summary
