"""RecyclingBuffers: a batch buffer is lent again only once nothing holds the batch (public APIs only)."""

import gc

import numpy as np
import pytest
import torch

from featstore.batches.assemblers import RecyclingBuffers


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int8])
def test_a_dropped_batch_lends_its_buffer_again(dtype):
    buffers = RecyclingBuffers((3, 5), dtype, batch_size=4, limit=2)
    first = buffers.take(4)
    assert first.shape == (4, 3, 5) and first.dtype == dtype
    address = first.data_ptr()
    del first
    gc.collect()
    again = buffers.take(2)  # a shorter last batch fits the same buffer
    assert again.data_ptr() == address and again.shape == (2, 3, 5)


def test_views_and_numpy_arrays_keep_the_buffer_out():
    buffers = RecyclingBuffers((8,), torch.float32, batch_size=4, limit=3)
    a = buffers.take(4)
    a.fill_(1.0)
    view = a[1:, :2]
    as_numpy = buffers.take(4).numpy()
    del a
    b = buffers.take(4)  # `view` holds the first buffer, `as_numpy` the second: a third one
    assert len({b.data_ptr(), view.data_ptr() - 8 * 4, as_numpy.ctypes.data}) == 3
    b.fill_(2.0)
    assert torch.equal(view, torch.ones(3, 2)) and as_numpy.shape == (4, 8)


def test_past_the_limit_a_fresh_tensor_is_made():
    buffers = RecyclingBuffers((2,), torch.float16, batch_size=2, limit=1)
    held = buffers.take(2).fill_(1)
    extra = buffers.take(2).fill_(3)
    assert extra.data_ptr() != held.data_ptr() and len(buffers.buffers) == 1
    np.testing.assert_array_equal(held.float().numpy(), np.ones((2, 2)))  # the held batch is untouched


def test_empty_rows():
    buffers = RecyclingBuffers((0,), torch.float32, batch_size=3, limit=2)
    assert buffers.take(3).shape == (3, 0)
