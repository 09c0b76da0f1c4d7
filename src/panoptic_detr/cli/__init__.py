"""`panoptic-detr` command line: the only place that reads sys.argv.

Each sub-command lives in its own module of this package and exposes
`register(subparsers)`, which adds its parser and sets `func` to a function taking the
parsed namespace and returning an exit code. Modules map flags to keyword arguments and
call into the library; no logic of their own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module in this package
COMMANDS = {
    "demo": "demo",
    "predict": "predict",
    "explain": "explain",
    "synth": "synth",
    "check": "check",
    "evaluate": "evaluate",
    "train": "train",
    "build-gt": "build_gt",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panoptic-detr", description="Panoptic segmentation with DETR."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # a command not written yet
            if e.name == f"{__name__}.{module}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
