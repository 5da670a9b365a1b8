"""``python -m ssd_trt.cli``: the same as the ``ssd-trt`` command."""

import sys

from . import main

sys.exit(main())
