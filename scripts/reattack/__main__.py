"""A fresh re-attack of the pretrained surface, ``biva detect``, ``biva predict``, ``biva ood``
and ``biva ablation`` with real faults (real FIFOs, device-file links, a mounted tmpfs, real
signals, second processes, permission denials, peak memory read from the kernel). Each
attack is one real ``biva`` process; it passes when there is no hang, no traceback, the
expected exit status (2 with one error line for a refusal), peak RSS under its bound and
nothing lost or mixed on disk. Writes OUT/attacks.json and OUT/attacks.md.

Usage (root, for the tmpfs): .venv/bin/python scripts/reattack OUT [--only TEXT]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import detect_attacks
import ood_ablation_attacks
import predict_attacks
import pretrained_attacks
from faults import unmount_all
from runner import Attack, run_process, verdict


def run_attack(attack: Attack, work: Path) -> dict:
    """Set up, run and judge one attack in its own folder ``work``."""
    work.mkdir(parents=True)
    try:
        argv = attack.setup(work)
    except Exception as e:      # noqa: BLE001  (a setup that fails is reported, not fatal)
        return {"setup_failed": f"{type(e).__name__}: {e}"}
    try:
        result = run_process(argv, work, attack.timeout, attack.signal_after, attack.user)
        problems = verdict(attack, work, result)
    finally:
        unmount_all(work)
    errors = result.error_lines
    return {"argv": [a.replace(str(work), "WORK") for a in argv], "rc": result.rc,
            "seconds": round(result.seconds, 1), "peak_mb": round(result.peak_mb),
            "max_mb": attack.max_mb, "error": errors[-1].replace(str(work), "WORK")
            if errors else None, "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default="", help="run the attacks whose name contains this")
    args = ap.parse_args()
    attacks = [a for m in (pretrained_attacks, detect_attacks, predict_attacks,
                           ood_ablation_attacks) for a in m.attacks() if args.only in a.name]
    shutil.rmtree(args.out / "work", ignore_errors=True)
    rows = []
    for i, attack in enumerate(attacks):
        slug = f"{i:03d}_" + re.sub(r"[^A-Za-z0-9]+", "_", attack.name)[:40]
        row = {"name": attack.name, "surface": attack.surface, "fault": attack.fault,
               **run_attack(attack, args.out / "work" / slug)}
        row["passed"] = not row.get("problems") and "setup_failed" not in row
        rows.append(row)
        print(f"{'ok  ' if row['passed'] else 'FAIL'} {attack.surface:10s} {attack.name}: "
              f"{row.get('problems') or row.get('setup_failed') or row.get('error') or ''}",
              flush=True)
    write(args.out, rows)
    return 0 if all(r["passed"] for r in rows) else 1


def write(out: Path, rows: list[dict]) -> None:
    """attacks.json (every row) and attacks.md (a table a reader scans)."""
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
            platform.machine(), "python": sys.version.split()[0], "n": len(rows),
            "passed": sum(r["passed"] for r in rows)}
    (out / "attacks.json").write_text(json.dumps({**meta, "attacks": rows}, indent=1) + "\n")
    lines = [f"# Re-attack: {meta['passed']} of {meta['n']} attacks held", "",
             "| surface | attack | exit | s | peak MB | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        cell = "held" if r["passed"] else "; ".join(r.get("problems") or [r.get(
            "setup_failed", "")])
        name = r["name"].replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")
        lines.append(f"| {r['surface']} | {name} | {r.get('rc')} | {r.get('seconds')} | "
                     f"{r.get('peak_mb')} | {cell} |")
    (out / "attacks.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
