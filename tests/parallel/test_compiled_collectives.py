"""The compiled shared-memory collectives (minscale/kernels/_collectives.py): bit-identical to
the Python path and to the rank-order sum on every rank, for every op, dtype and both the
one-phase and the reduce-scatter + all-gather paths; barrier and broadcast; the atomics; a
timeout when a peer never arrives.

Worker functions are module level so spawn can import them.
"""

import multiprocessing
import time

import numpy as np
import pytest

import minscale as ms
from minscale.parallel import (
    CommTimeoutError,
    SharedMemoryComm,
    SharedMemoryGroup,
    reduce_in_rank_order,
)
from minscale.parallel.shm import run_workers

pytestmark = pytest.mark.exactness
collectives = pytest.importorskip("minscale.kernels._collectives")

# one value, a small buffer, and one above SPLIT_MIN_BYTES that spans several chunks, the
# last one short
SIZES = (1, 1001, (collectives.DEFAULT_SPLIT_MIN_BYTES + collectives.DEFAULT_CHUNK_BYTES) // 8
         + 5)


def _contribution(rank, step, n, dtype):
    return np.random.default_rng([rank, step, n]).standard_normal(n).astype(dtype)


def _many(comm, dtype):
    out = []
    for step, n in enumerate(SIZES):
        for op in ("sum", "max", "min"):
            buf = _contribution(comm.rank, step, n, dtype)
            comm.allreduce(buf, op=op)
            out.append(buf)
        root = step % comm.size
        buf = np.full(5, comm.rank + 0.5, dtype=dtype)
        comm.broadcast(buf, root=root)
        out.append(buf)
        comm.barrier()
    return out, comm.compiled_group(dtype) is not None


def _expected(size, dtype):
    out = []
    for step, n in enumerate(SIZES):
        slots = np.stack([_contribution(r, step, n, dtype) for r in range(size)])
        for op in ("sum", "max", "min"):
            out.append(reduce_in_rank_order(slots, op, np.empty(n, dtype=dtype)))
        out.append(np.full(5, step % size + 0.5, dtype=dtype))
    return out


def _run(size, dtype, compiled):
    nbytes = max(SIZES) * 8
    ctx = multiprocessing.get_context("spawn")
    with SharedMemoryGroup(size, nbytes, context=ctx, compiled=compiled) as group:
        assert group.spec.compiled is compiled
    # run_workers makes its own group with the parent's backend
    previous = ms.get_backend()
    ms.set_backend("numba" if compiled else "numpy")
    try:
        return run_workers(_many, size, args=(dtype,), nbytes=nbytes)
    finally:
        ms.set_backend(previous)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_and_python_collectives_give_the_rank_order_bits(size, dtype):
    expected = _expected(size, dtype)
    for compiled in (True, False):
        for rank_result, was_compiled in _run(size, dtype, compiled):
            assert was_compiled is compiled
            assert len(rank_result) == len(expected)
            for got, want in zip(rank_result, expected):
                assert got.dtype == np.dtype(dtype)
                np.testing.assert_array_equal(got, want)


def test_atomics_read_and_write_int64_words():
    from numba import njit

    @njit
    def swap(a):
        old = collectives.load_acquire(a, 1)
        collectives.store_release(a, 1, old + 41)
        return collectives.load_acquire(a, 1)

    a = np.array([0, 1, 0], dtype=np.int64)
    assert swap(a) == 42 and a.tolist() == [0, 42, 0]


def test_control_offset_is_128_byte_aligned():
    for address in range(0, 256, 8):
        off = collectives.control_offset(address)
        assert off >= 4 and (address + 8 * off) % 128 == 0 and off < 4 + 16


def test_compiled_allreduce_times_out_when_the_peer_never_arrives():
    ctx = multiprocessing.get_context("spawn")
    with SharedMemoryGroup(2, 64, timeout=0.5, context=ctx, compiled=True) as group:
        comm = SharedMemoryComm(group.spec, 0)
        start = time.monotonic()
        with pytest.raises(CommTimeoutError):
            comm.allreduce(np.ones(4))
        assert 0.45 <= time.monotonic() - start < 10
        # the peers that come later give up at once instead of waiting out their own timeout
        assert group.spec.barrier.broken
        comm.close()
