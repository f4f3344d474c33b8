#!/usr/bin/env bash
# Every benchmark whose figures docs/performance.md and the README quote, in one call of at most ten minutes on a
# GPU machine, each under its own time limit so that one slow section cannot starve the others.
#
#   bash .ci/gpu/benchmarks.sh OUT_DIR
#
# Writes OUT_DIR/odd_widths.txt, OUT_DIR/models.md, OUT_DIR/ops/ (the sweep's report) and prints the summaries.
# Optional contenders (Liger-Kernel, QuACK, FlashInfer) are used where importable, e.g. from wheels installed with
# `pip install --no-deps --target DIR` and DIR on PYTHONPATH.
set -u
out=${1:?usage: benchmarks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== odd widths (benchmarks/odd_widths.py --quick)"
timeout 170 python3 benchmarks/odd_widths.py --quick > "$out/odd_widths.txt" 2> "$out/odd_widths.err"
cat "$out/odd_widths.txt"
echo "== models (benchmarks/models.py --quick)"
timeout 200 python3 benchmarks/models.py --quick --out "$out/models.md" > "$out/models.log" 2>&1
tail -30 "$out/models.log"
echo "== serving ops (python -m cujit bench --ops --quick, 1 and 4097 tokens)"
timeout 200 python3 -m cujit bench --ops --quick --tokens 1,4097 --time-limit 150 --out "$out/ops" \
    > "$out/ops.log" 2>&1
tail -5 "$out/ops.log"
