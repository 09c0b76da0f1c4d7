"""The flags of how a command that runs a model over many images shares its work between
processes (DataLoader workers, torchrun's processes and machines), worded once."""

from __future__ import annotations

import argparse

from . import whole_number


def add_parallel_flags(group: argparse._ActionsContainer) -> None:
    """--loader-workers (default None: not given, 0 processes) and --gather-outputs."""
    group.add_argument("--loader-workers", type=whole_number(0), default=None, metavar="N",
                       help="processes decoding and preprocessing images ahead of the network "
                            "(default 0: this process)")
    group.add_argument("--gather-outputs", action="store_true",
                       help="under torchrun on machines that share no file system: the other "
                            "processes send their outputs to rank 0, the only one that writes --out "
                            "(the inputs must be at the same paths on every machine)")
