"""Checkpoints as ``tensors.safetensors`` + ``meta.json`` directories; loading never runs code.

Layout of a run directory::

    run_dir/checkpoints/step_000001234/tensors.safetensors   # all tensors, "<group>/<name>" keys
    run_dir/checkpoints/step_000001234/meta.json             # format, groups, SHA-256, state

Pickle (and therefore ``torch.load``) is never used: a pickle can run arbitrary code when loaded,
and checkpoints are the kind of file people download and share. Non-tensor state lives in JSON;
``flatten_state_dict`` splits nested structures such as ``optimizer.state_dict()`` into both.

JSON cannot represent tuples, non-string dict keys or NaN/inf, so the JSON side uses a small tagged
encoding: such values become objects like ``{"$flat": "tuple", "items": [...]}``. Plain data
(string-keyed dicts, lists, finite numbers, strings, bools, None) is stored as-is and stays
readable. Skeletons (tag ``"$flat"``) and ``state`` (tag ``"$meta"``) use different tags so a
skeleton stored inside ``state`` is plain data to the outer layer and is not escaped twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from biva.utils.atomic import atomic_directory, raise_if_disk_full
from biva.utils.hashing import file_digests

StrPath = str | os.PathLike[str]

__all__ = [
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "META_FILE",
    "TENSORS_FILE",
    "CheckpointError",
    "checkpoint_path",
    "flatten_state_dict",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "unflatten_state_dict",
]

FORMAT_NAME = "biva-checkpoint"
FORMAT_VERSION = 2      # 2: meta.json covered by meta_sha256; version 1 (without) still loads
_READABLE_VERSIONS = (1, 2)
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
CHECKPOINTS_DIR = "checkpoints"

_SKELETON_TAG = "$flat"
_STATE_TAG = "$meta"
_STEP_DIR = re.compile(r"step_(\d+)")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_PICKLE_REFUSAL = "refusing to load a pickle-based file; biva checkpoints are safetensors + JSON"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, tampered with, of an unknown version or not safetensors."""


# ----------------------------------------------------------------------------- tagged JSON


def _encode(obj: Any, tag: str, parts: tuple[Any, ...], tensors: dict[str, torch.Tensor] | None,
            where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {tag: "float", "value": repr(obj)}
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise TypeError(f"{where}{_show(parts)} is a tensor; tensors belong in the `tensors` "
                            "groups (flatten_state_dict splits nested state)")
        key = _unique_key(parts, tensors)
        tensors[key] = obj
        return {tag: "tensor", "key": key}
    if isinstance(obj, tuple):
        return {tag: "tuple",
                "items": [_encode(v, tag, (*parts, i), tensors, where)
                          for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tag, (*parts, i), tensors, where) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and tag not in obj:
            return {k: _encode(v, tag, (*parts, k), tensors, where) for k, v in obj.items()}
        return {tag: "dict",
                "items": [[_encode(k, tag, parts, None, where),
                           _encode(v, tag, (*parts, k), tensors, where)]
                          for k, v in obj.items()]}
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():  # numpy scalars
        return _encode(item(), tag, parts, tensors, where)
    raise TypeError(f"{where}{_show(parts)}: cannot store a {type(obj).__name__} "
                    "(supported: tensors, dicts, lists, tuples, str, int, float, bool, None)")


def _show(parts: tuple[Any, ...]) -> str:
    return "".join(f"[{p!r}]" for p in parts)


def _unique_key(parts: tuple[Any, ...], taken: Mapping[str, Any]) -> str:
    base = ".".join(str(p) for p in parts) or "tensor"
    key, n = base, 1
    while key in taken:  # e.g. int key 0 and str key "0" in the same dict
        key, n = f"{base}#{n}", n + 1
    return key


def _decode(node: Any, tag: str, tensors: Mapping[str, torch.Tensor] | None) -> Any:
    if isinstance(node, list):
        return [_decode(v, tag, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if tag not in node:
        return {k: _decode(v, tag, tensors) for k, v in node.items()}
    kind = node[tag]
    try:
        if kind == "tensor":
            key = node["key"]
            if tensors is None or key not in tensors:
                raise CheckpointError(f"missing tensor {key!r} referenced by the skeleton")
            return tensors[key]
        if kind == "tuple":
            return tuple(_decode(v, tag, tensors) for v in node["items"])
        if kind == "float":
            return _NONFINITE[node["value"]]
        if kind == "dict":
            return {_decode(k, tag, tensors): _decode(v, tag, tensors) for k, v in node["items"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"malformed {kind!r} node {node!r}: {e!r}") from e
    raise CheckpointError(f"unknown node type {kind!r} in {node!r}")


def flatten_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure (e.g. ``optimizer.state_dict()``) into tensors and a JSON skeleton.

    Tensors (not copied) are keyed by path (``"state.0.exp_avg"``); int keys/tuples/NaN stay exact.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, _SKELETON_TAG, (), tensors, "state dict")
    return tensors, skeleton


def unflatten_state_dict(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Rebuild the structure flattened by :func:`flatten_state_dict` from its two halves."""
    return _decode(skeleton, _SKELETON_TAG, tensors)


# ----------------------------------------------------------------------------- save


def _prepare_tensor(t: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where} is a {type(t).__name__}, not a tensor "
                        "(use flatten_state_dict for nested state)")
    if t.layout != torch.strided:
        raise TypeError(f"{where}: {t.layout} tensors are not supported; convert to dense first")
    # A private contiguous CPU copy: safetensors refuses non-contiguous tensors and tensors that
    # share storage (tied weights, views), and the copy cannot change while it is written.
    return t.detach().resolve_conj().resolve_neg().to(
        device="cpu", memory_format=torch.contiguous_format, copy=True)


def save_checkpoint(
    path: StrPath,
    *,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Atomically write checkpoint directory ``path`` from tensor groups and JSON-able ``state``.

    With ``keep_last``, ``step_*`` siblings older than the newest ``keep_last`` are pruned.
    """
    path = Path(path)
    flat: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    for group, entries in tensors.items():
        if not isinstance(group, str) or not group or "/" in group:
            raise ValueError(f"invalid tensor group name {group!r} (non-empty, no '/')")
        names: list[str] = []
        for name, t in entries.items():
            if not isinstance(name, str):
                raise TypeError(f"tensors[{group!r}] has a non-string key {name!r}")
            flat[f"{group}/{name}"] = _prepare_tensor(t, f"tensors[{group!r}][{name!r}]")
            names.append(name)
        groups[group] = names
    # Encode before touching the disk so that bad state fails without side effects.
    encoded_state = _encode(dict(state), _STATE_TAG, (), None, "state")

    try:
        _write_checkpoint_dir(path, flat, groups, encoded_state)
    except OSError as err:
        # Name the checkpoint's file, not the temporary directory it was written in.
        raise_if_disk_full(err, path / Path(err.filename or "").name if err.filename else path)
        raise
    if keep_last is not None:
        _prune_dir(path.parent, keep_last, protect=(path,))
    return path


def _write_checkpoint_dir(path: Path, flat: dict[str, torch.Tensor],
                          groups: dict[str, list[str]], encoded_state: Any) -> None:
    with atomic_directory(path) as tmp:
        tensors_path = tmp / TENSORS_FILE
        try:
            safetensors.torch.save_file(flat, str(tensors_path), metadata={"format": "pt"})
        except Exception as err:  # safetensors' own error type for a full disk
            raise_if_disk_full(err, tensors_path)
            raise
        digests, size = file_digests(tensors_path)
        digest = digests["sha256"]
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tensors_file": TENSORS_FILE,
            "tensors_sha256": digest,
            "tensors_bytes": size,
            "torch_version": torch.__version__,
            "groups": groups,
            "state": encoded_state,
        }
        meta["meta_sha256"] = _meta_digest(meta)
        text = json.dumps(meta, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
        (tmp / META_FILE).write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- load


def _check_not_pickle(head: bytes, file: Path) -> None:
    # Protocol 2+ pickles start with the PROTO opcode 0x80 (legacy torch.save too); torch.save's
    # default format is a zip archive. Sniffing happens before any parser sees the bytes.
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{file}: {_PICKLE_REFUSAL}")


def _check_safetensors_bytes(data: bytes, file: Path) -> None:
    # A safetensors file is an 8-byte little-endian header length followed by a JSON header. Check
    # that structure first: a genuine header length can itself begin with byte 0x80.
    if len(data) >= 9:
        header_len = int.from_bytes(data[:8], "little")
        if 2 <= header_len <= len(data) - 8 and data[8:9] == b"{":
            return
    _check_not_pickle(data, file)
    raise CheckpointError(f"{file}: not a safetensors file")


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of what a checkpoint says besides its tensors (groups, state, the tensors'
    digest), canonically serialized: a hand-edited step or config no longer loads."""
    covered = {k: meta.get(k) for k in ("format_version", "tensors_sha256", "groups", "state")}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file {meta_path}") from None
    _check_not_pickle(raw, meta_path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not a biva checkpoint (no format {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise CheckpointError(f"{meta_path}: unknown checkpoint format version {version!r} "
                              f"(this version of biva reads versions {_READABLE_VERSIONS})")
    groups = meta.get("groups")
    if not (isinstance(groups, dict) and all(
            isinstance(v, list) and all(isinstance(k, str) for k in v) for v in groups.values())):
        raise CheckpointError(f"{meta_path}: malformed 'groups'")
    digest = meta.get("tensors_sha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise CheckpointError(f"{meta_path}: malformed 'tensors_sha256'")
    if "state" not in meta:
        raise CheckpointError(f"{meta_path}: missing 'state'")
    # Version 1 checkpoints, written before the metadata digest existed, carry none.
    if version >= 2 and meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"{meta_path}: metadata SHA-256 mismatch: the file was edited "
                              "or is corrupt (its step, state or tensor list changed)")
    return meta


def load_checkpoint(
    path: StrPath, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Load ``(tensor_groups, state)`` from a checkpoint directory written by save_checkpoint.

    Checks format version and SHA-256; refuses pickle/torch.save files unparsed (CheckpointError).
    """
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            _check_not_pickle(f.read(8), path)
        raise CheckpointError(f"{path}: expected a checkpoint directory containing "
                              f"{TENSORS_FILE} and {META_FILE}, got a file")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")

    tensors_path = path / TENSORS_FILE
    try:
        # One read: the bytes that are hashed are exactly the bytes that are parsed.
        data = tensors_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file {tensors_path}") from None
    _check_safetensors_bytes(data, tensors_path)
    meta = _read_meta(path / META_FILE)
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["tensors_sha256"]:
        raise CheckpointError(
            f"{tensors_path}: SHA-256 mismatch (meta.json says {meta['tensors_sha256']}, file is "
            f"{digest}); the checkpoint is tampered or corrupt")
    try:
        flat = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise CheckpointError(f"{tensors_path}: not a valid safetensors file ({e})") from e
    del data

    device = torch.device(map_location)
    expected = {f"{g}/{k}" for g, keys in meta["groups"].items() for k in keys}
    if set(flat) != expected:
        missing = sorted(expected - set(flat))[:5]
        extra = sorted(set(flat) - expected)[:5]
        raise CheckpointError(f"{tensors_path}: tensors do not match meta.json "
                              f"(missing {missing}, unexpected {extra})")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for group, keys in meta["groups"].items():
        groups[group] = {
            k: flat[f"{group}/{k}"] if device.type == "cpu" else flat[f"{group}/{k}"].to(device)
            for k in keys
        }
    try:
        state = _decode(meta["state"], _STATE_TAG, None)
    except CheckpointError as e:  # the decoder's messages do not know the file
        raise CheckpointError(f"{path / META_FILE}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / META_FILE}: 'state' is not a mapping")
    return groups, state


# ----------------------------------------------------------------------------- run-dir layout


def checkpoint_path(run_dir: StrPath, step: int) -> Path:
    """The directory for the checkpoint of ``step``: ``run_dir/checkpoints/step_000001234``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:09d}"


def _list_in(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        m = _STEP_DIR.fullmatch(entry.name)
        # Symlinks (e.g. "best" pointing at a step) are aliases, not checkpoints of their own.
        if m and entry.is_dir() and not entry.is_symlink() and (entry / META_FILE).is_file():
            found.append((int(m.group(1)), entry))
    return [p for _, p in sorted(found)]


def list_checkpoints(run_dir: StrPath) -> list[Path]:
    """Complete ``step_N`` checkpoint directories under ``run_dir/checkpoints``, oldest first."""
    return _list_in(Path(run_dir) / CHECKPOINTS_DIR)


def latest_checkpoint(run_dir: StrPath) -> Path | None:
    """The checkpoint with the highest step under ``run_dir/checkpoints``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _prune_dir(root: Path, keep_last: int, protect: Iterable[StrPath]) -> list[Path]:
    # keep_last = 0 would delete the checkpoint just written: a crash after it would lose the
    # whole run. The newest checkpoint is never deleted.
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1 (the newest checkpoint is always "
                         f"kept), got {keep_last!r}")
    found = _list_in(root)
    protected = {Path(p).resolve() for p in protect}
    if root.is_dir():
        # A symlink such as checkpoints/best -> step_000001000 protects its target implicitly.
        protected |= {e.resolve() for e in root.iterdir() if e.is_symlink()}
    candidates = found[: len(found) - keep_last]
    removed = []
    for ckpt in candidates:
        if ckpt.resolve() in protected:
            continue
        # Rename first so that a crash mid-delete never leaves a half-deleted step_N directory
        # that list_checkpoints would still offer for resuming.
        doomed = ckpt.with_name(f".{ckpt.name}.del-{secrets.token_hex(4)}")
        os.rename(ckpt, doomed)
        shutil.rmtree(doomed)
        removed.append(ckpt)
    return removed


_TEMPORARY = re.compile(r"\.(.+)\.(tmp|del|old)-[0-9a-f]{8}")
#: Where a run writes through temporaries: itself (config.json, metrics.jsonl, ...), its
#: checkpoints and its figures.
_TEMPORARY_HOMES = ("", CHECKPOINTS_DIR, "figures")


def remove_stale_temporaries(run_dir: StrPath) -> list[tuple[Path, str]]:
    """Clean up what a killed writer left in ``run_dir``; returns (path, what was done).

    Half-written temporaries (``.NAME.tmp-*``) and half-deleted checkpoints (``.NAME.del-*``)
    are deleted. ``.NAME.old-*`` is the previous version of NAME moved aside while NAME was
    replaced: deleted when NAME exists, renamed back to NAME when the kill came between the
    two renames (e.g. ``.best.old-*`` is then the only copy of the best checkpoint).
    Call only while holding the run directory's lock: a live writer's temporaries look the same.
    """
    done: list[tuple[Path, str]] = []
    for home in _TEMPORARY_HOMES:
        root = Path(run_dir) / home
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            m = _TEMPORARY.fullmatch(entry.name)
            if m is None or entry.is_symlink():
                continue
            final = root / m.group(1)
            if m.group(2) == "old" and not final.exists():
                os.rename(entry, final)
                done.append((entry, f"restored as {final.name}"))
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done.append((entry, "removed"))
    return done


def prune_checkpoints(
    run_dir: StrPath, keep_last: int, protect: tuple[StrPath, ...] = ()
) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints of ``run_dir``; returns those deleted.

    Never deletes paths in ``protect`` nor the target of a symlink inside ``run_dir/checkpoints``.
    """
    return _prune_dir(Path(run_dir) / CHECKPOINTS_DIR, keep_last, protect)
