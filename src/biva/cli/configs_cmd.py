"""``biva configs``: list the shipped configs and presets, or print one resolved."""

from __future__ import annotations

import argparse
import json

from biva.config import load_run_config
from biva.config.presets import PRESETS
from biva.config.run import shipped_configs
from biva.utils.config_io import to_dict


def add_parser(sub) -> None:
    p = sub.add_parser("configs", help="list shipped configs, or show one resolved",
                       description="Without NAME: list the shipped experiment configs and the "
                       "model presets. With NAME: print the resolved config as JSON.")
    p.add_argument("name", nargs="?", default=None,
                   help="a shipped config name or a YAML/JSON file to show resolved")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        print("configs:", ", ".join(shipped_configs()))
        print("model presets:", ", ".join(sorted(PRESETS)))
        return 0
    print(json.dumps(to_dict(load_run_config(args.name, args.overrides)), indent=2))
    return 0
