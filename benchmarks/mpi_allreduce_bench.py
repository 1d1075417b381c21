"""Time ``MPIComm.allreduce`` of one float64 buffer; run under ``mpiexec -n 2``.

Usage: ``mpiexec -n 2 python benchmarks/mpi_allreduce_bench.py [--n 524288] [--warmup 5]
[--samples 30] [--sizes 8,10240,4194304]``. Every sample is ``barrier; t0; allreduce(buf); t1`` on every rank (the
barrier lines the ranks up so no rank times its wait for a late peer); the sample's time is the
largest over the ranks (the collective ends when its last rank is done). Rank 0 prints one JSON
line: ``{"backend": "MPIComm", "size", "n", "nbytes", "samples_s": [...]}``; with ``--sizes``
(bytes, float64 buffers) the sizes are timed in turn within every round
(:func:`time_allreduce_sizes`) and the line is ``{"backend", "size", "sizes": {bytes:
[...]}}``. The buffer starts
at 1e-3-scale values, so the sums stay finite over any realistic number of samples. Started by
``benchmarks.w5_parallel`` with one BLAS/OpenMP thread per rank.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def time_allreduce(comm, n, warmup, samples, seed=0):
    """Per-sample seconds of ``comm.allreduce`` on a float64 buffer of n values, this rank.

    Parameters
    ----------
    comm : Communicator (``allreduce``, ``barrier``, ``rank``)
    n : int, values in the buffer (8 bytes each)
    warmup, samples : int, untimed and timed calls

    Returns
    -------
    list of float, length `samples`, seconds per allreduce on this rank
    """
    buf = np.random.default_rng(seed + comm.rank).random(n) * 1e-3
    for _ in range(warmup):
        comm.barrier()
        comm.allreduce(buf)
    out = []
    for _ in range(samples):
        comm.barrier()
        t = time.perf_counter()
        comm.allreduce(buf)
        out.append(time.perf_counter() - t)
    return out


def time_allreduce_sizes(comm, sizes, warmup, samples, seed=0):
    """Per-sample seconds of ``comm.allreduce`` for several buffer sizes, interleaved.

    Parameters
    ----------
    comm : Communicator
    sizes : sequence of int
        Buffer sizes in bytes (float64 buffers of ``max(1, size // 8)`` values).
    warmup, samples : int
        Untimed and timed rounds; each round times every size once, in turn.

    Returns
    -------
    dict int -> list of float
        Seconds per allreduce on this rank, by size in bytes.
    """
    rng = np.random.default_rng(seed + comm.rank)
    bufs = {nb: rng.random(max(1, nb // 8)) * 1e-3 for nb in sizes}
    out = {nb: [] for nb in sizes}
    for k in range(warmup + samples):
        for nb, buf in bufs.items():
            comm.barrier()
            t = time.perf_counter()
            comm.allreduce(buf)
            if k >= warmup:
                out[nb].append(time.perf_counter() - t)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=524288)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--sizes", default=None, help="bytes, comma-separated")
    args = parser.parse_args(argv)
    from minscale.parallel import MPIComm

    comm = MPIComm()
    if args.sizes:
        sizes = [int(v) for v in args.sizes.split(",")]
        times = time_allreduce_sizes(comm, sizes, args.warmup, args.samples)
        gathered = comm.comm.gather(times, root=0)
        if comm.rank == 0:
            worst = {nb: [max(col) for col in zip(*(g[nb] for g in gathered))] for nb in sizes}
            print(json.dumps({"backend": "MPIComm", "size": comm.size, "sizes": worst}),
                  flush=True)
        return
    times = time_allreduce(comm, args.n, args.warmup, args.samples)
    gathered = comm.comm.gather(times, root=0)
    if comm.rank == 0:
        worst = [max(col) for col in zip(*gathered)]
        print(json.dumps({"backend": "MPIComm", "size": comm.size, "n": args.n,
                          "nbytes": args.n * 8, "samples_s": worst}), flush=True)


if __name__ == "__main__":
    main()
