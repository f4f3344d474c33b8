"""The serving-op benchmark as a script: the same as ``python -m cujit bench --ops [NAMES...] [options]``.

    python benchmarks/serving_ops.py                      # every op, the full sweep
    python benchmarks/serving_ops.py norms --quick        # one family, fewer shapes
    python benchmarks/serving_ops.py rms_norm --tokens 1,4097 --sizes 8192 --out results/

See benchmarks/README.md for what each row measures and how to read the table.
"""

from __future__ import annotations

import sys

from cujit.tools.bench import main

if __name__ == "__main__":
    sys.exit(main(["--ops", *sys.argv[1:]]))
