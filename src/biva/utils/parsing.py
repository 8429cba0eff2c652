"""Comma-separated lists as options and settings spell them ("0,2,4", "1.0,0.8")."""

from __future__ import annotations


def _parse_list(text: str, cast: type, option: str, kind: str) -> list:
    """"a,b,c" -> [cast(a), cast(b), cast(c)]; a clear error naming ``option`` otherwise."""
    try:
        return [cast(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"{option}: expected {kind} separated by commas, found {text!r}"
                         ) from err



def parse_int_list(text: str, option: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; a clear error naming ``option`` for anything else."""
    return _parse_list(text, int, option, "integers")



def parse_names(text: str) -> list[str]:
    """"VAE, lvae,biva" -> ["vae", "lvae", "biva"] (lower-cased, blanks dropped)."""
    return [t.strip().lower() for t in text.split(",") if t.strip()]



def parse_temperatures(text: str) -> list[float]:
    """"1.0" or "1.0,0.8,0.6" -> list of floats."""
    values = _parse_list(text, float, "--temperature", "numbers")
    if not values or any(v < 0 for v in values):
        raise ValueError(f"--temperature: expected non-negative numbers, found {text!r}")
    return values
