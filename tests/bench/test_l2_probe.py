"""bench/l2_probe.py: the L2 sweep reads exactly the blocks it claims (interpreter; its rate is measured on a GPU)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import l2_probe  # noqa: E402


@pytest.mark.parametrize("n_blocks,reps,ctas", [(3, 2, 2), (4, 3, 5), (1, 2, 3)])
def test_sweep_reads_every_block_reps_times(n_blocks, reps, ctas):
    x = torch.randint(-2**31, 2**31 - 1, (n_blocks * l2_probe.BLOCK,), dtype=torch.int32)
    assert torch.equal(l2_probe.sweep(x, reps, ctas), l2_probe.xor_ref(x, reps, ctas))


def test_ref_covers_each_block_reps_times():
    # the reference's index arithmetic (which the byte count assumes): ctas·iters reads, every block ≥ reps times
    n_blocks, reps, ctas = 5, 3, 4
    iters = -(-reps * n_blocks // ctas)
    idx = (torch.arange(ctas)[:, None] + torch.arange(iters)[None, :] * ctas) % n_blocks
    assert torch.bincount(idx.flatten(), minlength=n_blocks).min() >= reps


def test_rejects_bad_buffer():
    with pytest.raises(ValueError, match="int32"):
        l2_probe.sweep(torch.zeros(l2_probe.BLOCK + 1, dtype=torch.int32), 2, 2)
    with pytest.raises(ValueError, match="int32"):
        l2_probe.sweep(torch.zeros(l2_probe.BLOCK, dtype=torch.float32), 2, 2)
