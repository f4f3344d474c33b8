"""``python -m cujit``: see ``cujit._cli``."""

from __future__ import annotations

import sys

from cujit._cli import main

if __name__ == "__main__":
    sys.exit(main())
