"""KVCache: preallocated, appended in place, batched, GQA-sized, with clear errors."""

import pytest
import torch

from attnlab.attention.cache import KVCache


def _step(steps, batch=2, heads=3, head_dim=4, value_dim=4, dtype=torch.float32):
    return (
        torch.randn(batch, heads, steps, head_dim, dtype=dtype),
        torch.randn(batch, heads, steps, value_dim, dtype=dtype),
    )


def test_append_returns_everything_cached_so_far():
    cache = KVCache(2, 3, 10, 4)
    k1, v1 = _step(3)
    k2, v2 = _step(1)
    cache.append(k1, v1)
    keys, values = cache.append(k2, v2)
    assert cache.length == 4
    torch.testing.assert_close(keys, torch.cat([k1, k2], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v1, v2], dim=2), rtol=0, atol=0)


def test_append_writes_in_place_without_reallocating():
    cache = KVCache(2, 3, 10, 4)
    key_ptr, value_ptr = cache.key.data_ptr(), cache.value.data_ptr()
    for _ in range(5):
        keys, values = cache.append(*_step(2))
        # The returned tensors are views of the preallocated buffers.
        assert keys.data_ptr() == key_ptr and values.data_ptr() == value_ptr
    assert cache.key.data_ptr() == key_ptr and cache.value.data_ptr() == value_ptr
    assert cache.length == cache.max_len == 10


def test_value_head_dim_may_differ_from_key_head_dim():
    cache = KVCache(2, 3, 5, 4, value_dim=6)
    keys, values = cache.append(*_step(2, value_dim=6))
    assert keys.shape == (2, 3, 2, 4) and values.shape == (2, 3, 2, 6)


def test_cache_uses_requested_dtype():
    cache = KVCache(1, 1, 4, 2, dtype=torch.bfloat16)
    assert cache.key.dtype == cache.value.dtype == torch.bfloat16
    keys, _ = cache.append(*_step(1, batch=1, heads=1, head_dim=2, value_dim=2,
                                  dtype=torch.bfloat16))
    assert keys.dtype == torch.bfloat16


def test_overflow_names_lengths_and_shapes():
    cache = KVCache(2, 3, 4, 4)
    cache.append(*_step(3))
    with pytest.raises(ValueError, match=r"overflow.*2 steps to 3 cached.*5 > max_len=4"):
        cache.append(*_step(2))
    assert cache.length == 3  # a failed append leaves the cache untouched


def test_shape_mismatch_names_expected_and_seen_shapes():
    cache = KVCache(2, 3, 8, 4)
    with pytest.raises(ValueError, match=r"kv_heads=3.*got key \(2, 4, 1, 4\)"):
        cache.append(*_step(1, heads=4))
    key, _ = _step(2)
    _, value = _step(1)
    seen = r"same steps.*key \(2, 3, 2, 4\) and value \(2, 3, 1, 4\)"
    with pytest.raises(ValueError, match=seen):
        cache.append(key, value)


def test_dtype_mismatch_is_a_type_error():
    cache = KVCache(2, 3, 8, 4)
    with pytest.raises(TypeError, match=r"torch.float32.*got key torch.float64"):
        cache.append(*_step(1, dtype=torch.float64))


def test_reset_starts_over_in_the_same_buffers():
    cache = KVCache(2, 3, 4, 4)
    cache.append(*_step(4))
    cache.reset()
    assert cache.length == 0
    k, v = _step(1)
    keys, values = cache.append(k, v)
    torch.testing.assert_close(keys, k, rtol=0, atol=0)
    torch.testing.assert_close(values, v, rtol=0, atol=0)


def test_filled_views_cover_only_appended_steps():
    cache = KVCache(2, 3, 8, 4)
    assert cache.filled()[0].shape == (2, 3, 0, 4)
    cache.append(*_step(3))
    assert cache.filled()[1].shape == (2, 3, 3, 4)


def test_non_positive_sizes_are_rejected():
    with pytest.raises(ValueError, match="max_len=0"):
        KVCache(1, 1, 0, 4)


def test_reorder_keeps_the_chosen_rows_and_the_filled_length():
    cache = KVCache(3, 2, 8, 4)
    key, value = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    cache.append(key, value)
    rows = torch.tensor([2, 2, 0])
    cache.reorder(rows)
    k, v = cache.filled()
    assert cache.length == 5 and k.shape == (3, 2, 5, 4)
    torch.testing.assert_close(k, key[rows], rtol=0, atol=0)
    torch.testing.assert_close(v, value[rows], rtol=0, atol=0)
