"""cujit inside a distributed job: two ranks under torchrun, NCCL all-reduces around fused add + RMSNorm, one cold
cache folder shared by both, and one compile in total."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu(count=2)
WORKER = Path(__file__).parent / "distributed" / "tp_norm_worker.py"


def test_two_ranks_share_one_cold_cache_and_compile_once(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun")
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "CUJIT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([*command, "--standalone", "--nproc-per-node", "2", str(WORKER), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sum(r["compiles"] for r in ranks) == 1, ranks  # one rank compiled, the other read the disk cache
    assert sum(r["disk_hits"] for r in ranks) == 1, ranks
    for r in ranks:
        assert r["worst"] <= 1e-2, r  # bf16: a rounding step or two of the largest value
