"""The example scripts the README points to run as documented."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ring_attention_example_under_torchrun_matches_one_process_attention():
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(EXAMPLES / "ring_attention.py"), "--seq-len", "512", "--causal"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"2 processes, n = 512: .* by at most (\S+)", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) < 1e-5
