"""attnlab's Muon: PyTorch's steps, with the Newton-Schulz iterations in a chosen dtype."""

import pytest
import torch

from attnlab.train.optim import Muon, newton_schulz_dtype, orthogonalize


def _run(optimizer_cls, shape, adjust_lr_fn, steps=3, **kwargs):
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(shape, generator=gen))
    optimizer = optimizer_cls([param], lr=0.02, adjust_lr_fn=adjust_lr_fn, **kwargs)
    for _ in range(steps):
        param.grad = torch.randn(shape, generator=gen)
        optimizer.step()
    return param.detach(), optimizer


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original", None])
def test_in_bf16_it_is_pytorchs_muon_bit_for_bit(shape, adjust_lr_fn):
    theirs, their_optimizer = _run(torch.optim.Muon, shape, adjust_lr_fn)
    ours, our_optimizer = _run(Muon, shape, adjust_lr_fn, ns_dtype=torch.bfloat16)
    assert torch.equal(ours, theirs)
    ours_state, theirs_state = our_optimizer.state_dict(), their_optimizer.state_dict()
    assert torch.equal(ours_state["state"][0]["momentum_buffer"],
                       theirs_state["state"][0]["momentum_buffer"])


def test_in_fp32_it_stays_within_bf16_rounding_of_pytorchs():
    theirs, _ = _run(torch.optim.Muon, (64, 32), "match_rms_adamw")
    ours, _ = _run(Muon, (64, 32), "match_rms_adamw", ns_dtype=torch.float32)
    start, _ = _run(Muon, (64, 32), "match_rms_adamw", steps=0)
    moved = (theirs - start).abs().max()
    assert not torch.equal(ours, theirs)  # the iterations really ran in another dtype
    assert (ours - theirs).abs().max() < 0.05 * moved


def test_the_iteration_makes_the_singular_values_near_one():
    matrix = torch.randn(96, 40, generator=torch.Generator().manual_seed(1))
    ortho = orthogonalize(matrix, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    singular = torch.linalg.svdvals(ortho)
    assert ortho.shape == matrix.shape
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_the_cpu_iterates_in_fp32_and_cuda_in_bf16():
    assert newton_schulz_dtype(torch.device("cpu")) == torch.float32
    assert newton_schulz_dtype(torch.device("cuda")) == torch.bfloat16
