"""The ``ssd-trt`` command line: one verb per task (see ``ssd-trt --help``).

Exit codes: 0 success; 1 an unexpected failure, or `compare` tolerances exceeded (FAIL);
2 bad input or environment (a one-line message says what to do); 130 interrupted (Ctrl-C or
SIGTERM).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .. import progress
from ..errors import SsdTrtError, Terminated, first_line, stop_on_sigterm
from .args import build_parser
from .console import EXIT_FAILURE, EXIT_INTERRUPTED
from .verbs import VERBS

__all__ = ["main"]


def _log_levels(verbose: bool, quiet: bool) -> None:
    progress.configure(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    # TensorFlow, tf2onnx and absl are chatty at import and conversion time: errors only,
    # unless -v. TF_CPP_MIN_LOG_LEVEL silences its C++ side (read when TF is imported).
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # OpenCV's [WARN] lines and FFmpeg's own ("moov atom not found", "Connection refused")
        # would come before our one-line error about the same source: errors only, unless -v.
        # Read by OpenCV when it loads, which the CLI leaves to the verbs.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    for name in ("tensorflow", "tf2onnx", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_levels(args.verbose, args.quiet)
    stop_on_sigterm()
    try:
        return int(VERBS[args.verb](args))
    except SsdTrtError as exc:
        print(f"ssd-trt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"ssd-trt: {how}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.verbose:
            raise
        message = first_line(exc) if str(exc).strip() else ""
        print(
            f"ssd-trt: error: unexpected {type(exc).__name__}: {message} "
            "(run with --verbose for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
