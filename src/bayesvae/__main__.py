"""``python -m bayesvae``: the same command as ``bayesvae``."""

import sys

from .cli import main

sys.exit(main())
