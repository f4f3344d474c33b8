#!/usr/bin/env bash
# The measurements that the newest predictions of docs/performance.md wait for (the sections written "before any
# run"), in one call of at most ten minutes on a GPU machine (550 s of steps, each under its own time limit, and
# room for installing the project first).
#
#   bash .ci/gpu/pending.sh OUT_DIR
#
# 1. The GPU tests of every kernel changed since the last GPU run (router, rotary and the fused rope + KV store,
#    KV-cache store, rows.cuh and the norms' paths, activations, FP8 and the fused FP8 ops).
# 2. The serving rows those changes predict: topk_softmax, rotary, the KV-cache store and the fused rope + KV store
#    at 1, 16 and 4097 tokens.
# 3. The odd widths of rotary, the KV-cache store, rms_norm, fused add + RMSNorm, per-group FP8 and the guide's
#    example; then row_map against Liger's form (every value loaded alone, many in flight).
# 4. fused_add_rms_norm's FUSED_FILL pick at 8192 one element in (and 5121).
# 5. The warm start of a cached op in a new process, with its profile.
#
# Writes one log per step into OUT_DIR and prints their tails. Liger-Kernel and QuACK rows appear where importable.
set -u
out=${1:?usage: pending.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
workers=""
python3 -c "import xdist" 2>/dev/null && workers="-n 8"

echo "== 1. GPU tests of the changed kernels"
# shellcheck disable=SC2086  # $workers is empty or two words
timeout 180 python3 -m pytest -q -x $workers tests/test_topk_softmax_gpu.py tests/test_rotary_gpu.py \
    tests/test_fused_rope_kv_gpu.py tests/test_kv_cache_gpu.py tests/test_rows_gpu.py tests/test_norms_paths_gpu.py \
    tests/test_activations_gpu.py tests/test_fp8_quant_gpu.py tests/test_fused_quant_gpu.py > "$out/tests.log" 2>&1
tail -3 "$out/tests.log"

echo "== 2. serving rows (python -m cujit bench --ops ... --quick --tokens 1,16,4097)"
timeout 150 python3 -m cujit bench --ops topk_softmax rotary_embedding store_kv_cache rotary_embedding_with_kv_cache \
    --quick --tokens 1,16,4097 --time-limit 120 --out "$out/ops" > "$out/ops.log" 2>&1
tail -40 "$out/ops.log"

echo "== 3. odd widths (benchmarks/odd_widths.py --quick)"
timeout 100 python3 benchmarks/odd_widths.py --quick --ops affine rms_norm fused_add_rms_norm rotary_embedding \
    store_kv_cache per_token_group_quant_fp8 > "$out/odd_widths.txt" 2> "$out/odd_widths.err"
cat "$out/odd_widths.txt"

echo "== 3b. row_map against Liger's form (benchmarks/tune_rows.py)"
timeout 40 python3 benchmarks/tune_rows.py --rounds 3 > "$out/tune_rows.txt" 2>&1
tail -8 "$out/tune_rows.txt"

echo "== 4. fused_add_rms_norm's pick at 8192 one element in (benchmarks/tune_norms.py)"
timeout 40 python3 benchmarks/tune_norms.py --ops fused_add_rms_norm --shapes 4096x8192+1,4097x5121+1 \
    > "$out/tune_norms.txt" 2>&1
tail -20 "$out/tune_norms.txt"

echo "== 5. warm start (python -m cujit bench --only startup)"
timeout 40 python3 -m cujit bench --only startup > "$out/startup.txt" 2>&1
tail -40 "$out/startup.txt"
