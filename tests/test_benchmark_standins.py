"""The benchmarks that swap PyTorch's ``scaled_dot_product_attention`` into attnlab's modules must
accept every argument ``MultiHeadAttention`` passes, compute the same thing, and refuse what
they cannot stand in for (a stale stand-in once broke ``benchmarks/vit.py`` with a TypeError)."""

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from attnlab.attention import attention

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def stand_in(script: str):
    spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.torch_sdpa


@pytest.mark.parametrize("script, is_causal", [("vit", False), ("train_gpt", True)])
def test_the_stand_in_takes_attentions_arguments_and_matches_it(script, is_causal):
    torch_sdpa = stand_in(script)
    assert set(inspect.signature(attention).parameters) - {"scale", "softcap"} \
        <= set(inspect.signature(torch_sdpa).parameters)
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64) for _ in range(3))
    kwargs = {"attn_mask": None, "dropout_p": 0.0, "is_causal": is_causal, "enable_gqa": False,
              "window": None, "alibi_slopes": None, "global_tokens": 0}  # as MultiHeadAttention passes them
    torch.testing.assert_close(torch_sdpa(q, k, v, backend="auto", **kwargs), attention(q, k, v, **kwargs))
    with pytest.raises(ValueError, match="stands in for plain"):
        torch_sdpa(q, k, v, window=(2, 0), global_tokens=1)
