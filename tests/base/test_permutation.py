"""featstore._core.permute_pcg64 (and its numpy fallback) draws numpy's permutation bit for bit, and the
loader's random order is numpy's default_rng([seed, epoch]).permutation(n)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featstore import _backend
from featstore.batches import orders

torch.set_num_threads(1)


def _state(rng: np.random.Generator) -> tuple:
    s = rng.bit_generator.state
    return s["state"]["state"], s["state"]["inc"], s["has_uint32"], s["uinteger"]


def _permute(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    _backend.permute_pcg64(out, *_state(rng))
    return out


# sizes around the kernel's 2048-word blocks and the masks' powers of two
SIZES = [0, 1, 2, 3, 4, 5, 8, 9, 1023, 1024, 1025, 2047, 2048, 2049, 2050, 4095, 4097, 65_537]


@pytest.mark.parametrize("n", SIZES)
def test_the_permutation_is_numpys(backend, n):
    for seed in range(3):
        expected = np.random.default_rng([seed, n]).permutation(n)
        got = _permute(np.random.default_rng([seed, n]), n)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (n, seed)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=st.integers(0, 9000), spent=st.integers(0, 5))
def test_any_generator_state_gives_numpys_permutation(seed, n, spent):
    """Any state numpy's PCG64 can be in: random seeds, and draws already made (an odd number of 32-bit
    draws leaves the upper half of a 64-bit draw buffered, which numpy hands out next)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, 2**32 - 1, size=spent, dtype=np.uint32)
    twin = np.random.default_rng(seed)
    twin.integers(0, 2**32 - 1, size=spent, dtype=np.uint32)
    assert rng.bit_generator.state["has_uint32"] == spent % 2
    assert np.array_equal(_permute(rng, n), twin.permutation(n))


def test_permute_checks_its_buffer(backend):
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="out must have dtype int64"):
        _backend.permute_pcg64(np.empty(4, dtype=np.int32), *_state(rng))
    with pytest.raises(ValueError, match="out must be 1-D"):
        _backend.permute_pcg64(np.empty((2, 2), dtype=np.int64), *_state(rng))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _backend.permute_pcg64(np.empty(8, dtype=np.int64)[::2], *_state(rng))
    frozen = np.empty(4, dtype=np.int64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _backend.permute_pcg64(frozen, *_state(rng))


def test_uniform_permutation_is_default_rngs(backend):
    assert orders._backend_agrees_with_numpy(backend)
    for n, seed, epoch in [(0, 0, 0), (1, 5, 2), (262_144, 0, 1), (10_001, 2**62, 7)]:
        assert np.array_equal(
            orders.uniform_permutation(n, seed, epoch), np.random.default_rng([seed, epoch]).permutation(n)
        )


def test_the_loaders_random_order_is_the_same_permutation(tmp_path):
    import featstore

    store = featstore.FeatureStore.create(tmp_path / "s")
    with store.create_feature_set("a", 3000, (2,), "float16") as w:
        w.write(0, np.zeros((3000, 2), np.float16))
    loader = featstore.FeatureStore.open(tmp_path / "s")["a"].batches(64, seed=11)
    for epoch in (0, 3):
        assert np.array_equal(loader.epoch_order(epoch), np.random.default_rng([11, epoch]).permutation(3000))
