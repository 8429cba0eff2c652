"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from biva.pretrained import materialize
from biva.utils.deprecation import warn_renamed
from biva.utils.device import resolve_device
from biva.utils.machine import limit_threads_to_idle_cores
from biva.utils.parsing import parse_int_list, parse_names, parse_temperatures  # noqa: F401


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default
    (or the default is None: nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or "default:" in text or action.default in (None,
                                                                           argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class BivaParser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelt (``--thread`` is not
    ``--threads``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def unknown_options_error(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    """Exit 2 with the subcommand's usage and each unknown option with a suggestion."""
    import difflib

    known = [o for a in parser._actions for o in a.option_strings]
    parts = []
    for item in extra:
        name = item.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) \
            if name.startswith("-") else []
        parts.append(f"{item} (did you mean {close[0]}?)" if close else item)
    parser.error(f"unrecognized arguments: {' '.join(parts)}")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device and --threads."""
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def setup_runtime(args: argparse.Namespace) -> torch.device:
    """Apply --threads (0: torch's default, fewer on a busy machine) and resolve --device."""
    device = resolve_device(args.device)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    elif hasattr(args, "threads") and device.type == "cpu" and (
            why := limit_threads_to_idle_cores()):
        print(why, file=sys.stderr, flush=True)
    return device


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int = _int_at_least(1)      # argparse type: 1, 2, ...
nonnegative_int = _int_at_least(0)   # argparse type: 0, 1, ...


def add_run_dir_argument(p, help: str = "a biva run directory") -> None:
    """RUN_DIR, or ``--pretrained NAME`` for a shipped model (see biva.pretrained)."""
    p.add_argument("run_dir", type=Path, nargs="?", default=None, help=f"{help} (or "
                   "--pretrained NAME)")
    p.add_argument("--pretrained", metavar="NAME", default=None,
                   help="a shipped pretrained model instead of RUN_DIR (biva.pretrained."
                   "list_models(); written once as runs/pretrained/NAME)")


def resolve_run_dir(args) -> None:
    """Set ``args.run_dir`` from ``--pretrained`` where the command takes one; refuse both
    or neither."""
    if not hasattr(args, "pretrained"):
        return
    if args.pretrained and args.run_dir is not None:
        raise ValueError(f"give a run directory or --pretrained, not both ({args.run_dir}, "
                         f"{args.pretrained})" + (f"; {hint}" if (hint := images_hint(args))
                                                  else ""))
    if args.pretrained:

        args.run_dir = materialize(args.pretrained)
    elif args.run_dir is None:
        raise ValueError("a run directory is needed (or --pretrained NAME)")


def images_hint(args) -> str:
    """For a command with ``--images``: the fix when its RUN_DIR slot holds images instead
    ("" when it does not)."""
    path = args.run_dir
    if getattr(args, "images", "absent") is not None or path is None or not path.exists() or (
            path / "config.json").is_file():
        return ""
    return f"{path} is not a run directory: to use its images pass --images {path}"


def add_renamed_option(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept the old spelling ``old`` of the option ``new`` (already added) for one release:
    it is hidden from ``--help``, sets ``new``'s value and warns in one line naming ``new``."""
    target = next(a for a in p._actions if new in a.option_strings)

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warn_renamed(old, new, parser.prog)
            if target.type is not None and isinstance(values, str):
                try:
                    values = target.type(values)
                except (argparse.ArgumentTypeError, ValueError) as err:
                    parser.error(f"argument {old} (now {new}): {err}")
            setattr(namespace, target.dest, values)

    p.add_argument(old, action=Renamed, help=argparse.SUPPRESS, metavar=target.metavar,
                   nargs=target.nargs)


def rounded(value, digits: int = 4):
    """``value`` with every float rounded to ``digits`` decimals, for reading (result files
    keep full precision)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def print_summary(summary: dict) -> None:
    """The one way commands print a result on the console: JSON, floats to 4 decimals."""
    print(json.dumps(rounded(summary), indent=1))
