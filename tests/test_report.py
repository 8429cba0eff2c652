"""`biva report` on a tiny trained run: one self-contained HTML page and diagnostics.json; the
page opens in headless Chromium (offline) with every image loaded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from biva.cli.main import main

DATA_PNG = "data:image/png;base64,"


@pytest.fixture(scope="module")
def report(tiny_run) -> Path:
    args = ["report", str(tiny_run), "--n-examples", "100", "--ess-k", "16", "--images", "4"]
    assert main(args) == 0
    return tiny_run / "report.html"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_report_is_self_contained(report):
    page = report.read_text(encoding="utf-8")
    tags = _tags(page)
    imgs = [a["src"] for t, a in tags if t == "img"]
    # curves, KL heatmap, active units, samples, partial generations, recon, interpolation
    assert len(imgs) == 7
    for src in imgs:
        assert src.startswith(DATA_PNG)
        img = Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True)))
        img.load()
        assert img.format == "PNG" and min(img.size) > 8
    assert "http://" not in page and "https://" not in page
    assert not [t for t, a in tags if t in ("script", "link", "iframe", "object", "embed")]
    assert not [a for _, a in tags if any(k in a for k in ("href", "srcset", "data"))]
    for heading in ("Config", "Metrics", "Training curves", "KL per latent group",
                    "Diagnostics (validation)", "Samples", "Reconstructions",
                    "Interpolation in the top latent"):
        assert f"<h2>{heading}</h2>" in page
    assert "<details>" in page  # collapsible config
    assert "&quot;variant&quot;: &quot;biva&quot;" in page


def test_diagnostics_json(report, tiny_run):
    diag = json.loads((tiny_run / "diagnostics.json").read_text())
    assert diag["n_examples"] == 100 and diag["split"] == "valid"
    groups = ["z1_bu", "z1_td", "z2_bu", "z2_td", "z3"]
    assert list(diag["kl_groups"]) == groups
    assert diag["kl_per_epoch"]["groups"] == groups
    assert 0 <= diag["active_units"]["active"] <= diag["active_units"]["dims"] == 64
    assert 1 <= diag["ess"]["mean"] <= 16
    assert diag["elbo"] == pytest.approx(diag["log_px"] - diag["kl"], abs=1e-4)
    assert diag["curves"]["valid"]["step"] == [4, 8]
    assert (tiny_run / "figures" / "report" / "partial.png").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # Offline and stateless: a fresh profile, no background services or network features.
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# Counts the report's images that decoded (complete, with a width) and checks a broken
# control image is reported as broken, so the count cannot pass vacuously.
PROBE = """<img id="control" src="data:image/png;base64,AAAA" alt="">
<script>window.addEventListener("load", function () {
  var ok = 0, total = 0;
  for (const im of document.images) {
    if (im.id === "control") continue;
    total += 1;
    if (im.complete && im.naturalWidth > 0) ok += 1;
  }
  var c = document.getElementById("control");
  var d = document.createElement("div");
  d.id = "img-check";
  d.textContent = ok + "/" + total + "/" + (c.complete && c.naturalWidth > 0 ? 1 : 0);
  document.body.appendChild(d);
});</script>"""


def test_chromium_loads_every_image(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium); the browser check "
                    "needs it")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")
    res = _run_chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                        probe.as_uri())
    match = re.search(r'id="img-check">(\d+)/(\d+)/(\d)<', res.stdout)
    assert match, f"no probe result in Chromium's DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    ok, total, control = map(int, match.groups())
    assert total == 7 and ok == total and control == 0

    shot = tmp_path / "report.png"
    res = _run_chromium(exe, tmp_path, "--window-size=1200,5000", f"--screenshot={shot}",
                        report.as_uri())
    assert shot.is_file(), f"no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 5000)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # something was drawn, not a blank page
