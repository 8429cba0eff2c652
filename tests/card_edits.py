"""Edits of a pretrained folder's card, as an attacker or a careless user makes them: shared by
the pretrained-surface tests and the re-attack (scripts/reattack)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_card(folder: Path) -> dict:
    """card.json of ``folder`` as a dict (no checks: the file may be one the test damaged)."""
    return json.loads((folder / "card.json").read_text())


def edit_card(folder: Path, **changes) -> None:
    """Change card fields without re-signing anything."""
    (folder / "card.json").write_text(json.dumps({**read_card(folder), **changes}))


def sign(folder: Path, **changes) -> None:
    """Re-sign the card after a file was changed: each digest recomputed from its file."""
    card = {**read_card(folder), **changes}
    if isinstance(card.get("sha256"), dict):
        for f in list(card["sha256"]):
            path = folder / f
            if path.is_file() and not path.is_symlink():
                card["sha256"][f] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
