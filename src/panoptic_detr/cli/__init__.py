"""`panoptic-detr` command line: the only place that reads sys.argv.

Each sub-command lives in its own module of this package and exposes
`register(subparsers)`, which adds its parser and sets `func` to a function taking the
parsed namespace and returning an exit code. Modules map flags to keyword arguments and
call into the library; no logic of their own.

Building the parser imports no torch (nor the model): a command module imports its heavy
modules inside its `run`, so `--help` and `--version` are instant and a command's memory is
its own. `main` is the one error path of every command: a usage error (a flag, a setting or
a config value out of range, a device that is not there) is one line and exit 2; a weights,
checkpoint, data or I/O error that escapes a command is one line and exit 1; other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from .. import __version__

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
    "export": "export",
    "serve": "serve",
}

USAGE_ERRORS = (
    ("panoptic_detr.settings", "SettingsError"),
    ("panoptic_detr.train.config", "ConfigError"),
    ("panoptic_detr.data.synth", "SynthError"),
    ("panoptic_detr.cli", "OptionError"),
)
"""(module, class) of the errors that are exit 2: nothing ran."""

RUN_ERRORS = (
    ("panoptic_detr.model.weights", "WeightsError"),
    ("panoptic_detr.checkpoint", "CheckpointError"),
    ("panoptic_detr.train.loop", "TrainError"),
    ("panoptic_detr.data.images", "ImageError"),
    ("builtins", "OSError"),
)
"""(module, class) of the errors that are exit 1: one line naming the file and what to do.
Looked up in sys.modules only: an error of a module never imported cannot have been raised,
and classifying one must not import torch."""

COUNTS = {"batch_size": "--batch-size"}
"""Count flags of any command: whole numbers >= 1, checked before the command runs (--workers
is checked by each parser: 0 means "in this process" where a command allows it)."""


class OptionError(ValueError):
    """A flag value out of range, or a --device (or config `device`) this machine does not have."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (and exit 2), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="panoptic-detr", description="Panoptic segmentation with DETR.")
    parser.add_argument("--version", action="version", version=f"panoptic-detr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # a command not written yet
            if e.name == f"{__name__}.{module}":
                continue
            raise
        mod.register(sub)
    return parser


def whole_number(low: int):
    """argparse type: an integer >= `low`, refused in one line naming the value and range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected a whole number >= {low})")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


def probability(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is out of range (expected a probability from 0 to 1)")
    return value


def add_quiet_flag(parser: argparse.ArgumentParser, *old: str) -> None:
    """--quiet, the progress switch of every command that shows progress; `old` spellings of it
    keep working, hidden from --help."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (off anyway when stderr is not a terminal)")
    for flag in old:
        parser.add_argument(flag, dest="quiet", action="store_true", help=argparse.SUPPRESS)


def check_device(name: str | None) -> None:
    """OptionError unless `name` is "auto" or a torch device this machine has."""
    if name in (None, "auto", "cpu"):  # no torch import where no device can be missing
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise OptionError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 .. "
                              f"cuda:{count - 1})")


def _check_counts(args: argparse.Namespace) -> None:
    for name, flag in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise OptionError(f"{flag} {value} is out of range (expected a whole number >= 1)")


def _classify(error: BaseException) -> int | None:
    """2 for a usage error, 1 for a run error, None for anything else (a bug)."""
    for code, kinds in ((2, USAGE_ERRORS), (1, RUN_ERRORS)):
        for module, name in kinds:
            cls = getattr(sys.modules.get(module), name, None)
            if cls is not None and isinstance(error, cls):
                return code
    return None


def one_line(error: BaseException) -> str:
    """The error as one line: an OSError names its file and reason, others their first line."""
    if isinstance(error, OSError) and error.strerror:
        where = " -> ".join(os.fspath(f) for f in (error.filename, error.filename2) if f is not None)
        return f"{where}: {error.strerror}" if where else error.strerror
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if hasattr(args, "quiet") and not sys.stderr.isatty():
        args.quiet = True  # a log file gets no progress bars
    try:
        _check_counts(args)
        check_device(getattr(args, "device", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = _classify(e)
        if code is None:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return code
