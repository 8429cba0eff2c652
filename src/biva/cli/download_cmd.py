"""``biva download``: fetch a public dataset into the cache (needs network)."""

from __future__ import annotations

import argparse

from biva.cli.common import add_renamed_option
from biva.data import DOWNLOADABLE, download, resolve_data_root


def add_parser(sub) -> None:
    p = sub.add_parser("download", help="download a public dataset",
                       description="Download a public dataset's canonical files into the data "
                       "folder and verify their checksums where known.")
    p.add_argument("name", choices=sorted(DOWNLOADABLE), help="the dataset to download")
    p.add_argument("--data-root", default=None, help="data folder (default: $BIVA_DATA_DIR or "
                   "~/.cache/biva/data)")
    add_renamed_option(p, "--root", "--data-root")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = resolve_data_root(args.data_root)
    paths = download(args.name, root)
    for path in paths or []:
        print(path)
    return 0
