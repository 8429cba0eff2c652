"""The ``biva`` command: one module a subcommand (``*_cmd.py``), each parsing its options,
calling one library function and printing what it returned."""

from __future__ import annotations

import argparse
import sys
import warnings

from biva import __version__
from biva.cli import (
    ablation_cmd,
    configs_cmd,
    densities_cmd,
    detect_cmd,
    download_cmd,
    evaluate_cmd,
    ood_cmd,
    predict_cmd,
    report_cmd,
    run_cmd,
    sample_cmd,
    text_cmd,
    train_cmd,
)
from biva.cli.common import BivaParser, HelpFormatter, resolve_run_dir, unknown_options_error
from biva.utils.atomic import is_disk_full
from biva.utils.deprecation import BivaDeprecationWarning
from biva.utils.signals import sigterm_unwinds

SUBCOMMANDS = [train_cmd, evaluate_cmd, sample_cmd, run_cmd, download_cmd, configs_cmd, ood_cmd,
               detect_cmd, report_cmd, predict_cmd, densities_cmd, text_cmd, ablation_cmd]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = BivaParser(
        prog="biva", description="Deep hierarchical VAEs (BIVA, LVAE, LVAE+, VAE): train, "
        "evaluate importance-weighted bounds, sample.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"biva {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=BivaParser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    # Renamed options and fields: one line on stderr, not Python's two-line warning format.
    if issubclass(category, BivaDeprecationWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    warnings.showwarning = _one_line_warnings
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported by the subcommand (its usage, and "did you mean" for each option), not as
        # the top-level usage.
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        unknown_options_error(sub.choices[args.command], extra)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. for worker processes
    try:
        with sigterm_unwinds():
            resolve_run_dir(args)
            return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        # Training stops at a step boundary with a checkpoint (TrainingInterrupted says so);
        # the exit status is the shell's 128 + signal number (130 SIGINT, 143 SIGTERM).
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, MemoryError) as err:
        # Bad input: one clear line naming the problem, no traceback.
        print(f"biva {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a read-only folder, a permission: one line naming the file. Every
        # output is written atomically, so what was there before is intact.
        print(f"biva {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if is_disk_full(err):  # another library's error for a full disk (e.g. safetensors)
            print(f"biva {args.command}: error: no space left on device ({one_line(err)}); "
                  "free space and run the command again", file=sys.stderr)
            return 2
        raise


def one_line(err: BaseException) -> str:
    """The error's message on one line (its type's name when it has none)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def describe_os_error(err: OSError) -> str:
    """'<what> writing/reading <file>' for an OSError, with the remedy for a full disk."""
    what = err.strerror or one_line(err)
    where = f": {err.filename}" if err.filename else ""
    if is_disk_full(err):
        return (f"no space left on device{where} ({what}); the files written before are "
                "intact: free space and run the command again")
    return f"{what}{where}"


if __name__ == "__main__":
    sys.exit(main())
