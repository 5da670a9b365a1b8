"""What every verb shares: exit codes, the --json output and where lines for people go."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from ..fsutil import STDOUT, atomic_write, check_writable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def write_json_output(path: str, data: dict) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2).encode() + b"\n")


def check_json_output(args: argparse.Namespace) -> None:
    """A --json FILE that cannot be written fails now, not after the long work."""
    if args.json:
        check_writable(args.json)


def human_stream(args: argparse.Namespace) -> TextIO:
    """Where the lines for people go: stdout, unless ``--json -`` keeps it for the JSON."""
    return sys.stderr if getattr(args, "json", None) == STDOUT else sys.stdout
