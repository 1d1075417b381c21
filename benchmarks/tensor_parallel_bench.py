"""Tensor parallelism against one process and against data parallelism, same model and batch.

    python -m benchmarks.tensor_parallel_bench [--rounds 3] [--steps 8] [--width 2048]
                                               [--batch 128] [--out PATH]

Expected run time on an idle 2-core machine: about 2 minutes with the defaults (each round
starts 4 trainings of ``--steps`` SGD steps; worker start-up, a few seconds per call, is not
timed). Prints one JSON object (and writes it to ``--out`` when given).

Model: ``Dense(width, relu) x 3, Dense(16)`` on ``width`` inputs, float32, plain SGD, MSE,
global batch ``--batch``: compute-dominated (three width x width GEMMs per layer and step).
Candidates, interleaved A B C D within each round:

- ``single_1t``: ``fit`` in this process at 1 BLAS thread;
- ``single_2t``: the same at 2 BLAS threads (what one process gets from 2 cores);
- ``tensor_2``: ``fit(..., tensor_parallel=2)``, 2 processes x 1 thread;
- ``data_2``: ``fit(..., workers=2)``, 2 processes x 1 thread, each on half of every batch.

Step time is measured inside the training, so process start-up stays out: a callback stamps
``time.perf_counter()`` at every ``on_step_begin`` in every process and writes the stamps at
the end; a step's time is the gap to the next stamp (the last step has none), the first
`WARMUP` gaps are dropped (page faults, first BLAS calls), and a run's step time is the median
gap of its slowest process. Reported per candidate: median, min and max over rounds, and the
per-round ratios against ``single_1t``.

Communication per step, for the record: tensor parallelism allreduces one ``(batch, width)``
activation per pair forward and one ``(batch, width)`` input gradient per pair backward but the
first (here 2 pairs: 3 x batch x width values); data parallelism one allreduce of all P
parameters' gradients.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

#: Gaps dropped at the start of every training run.
WARMUP = 2


class StepStamps:
    """Callback: the perf_counter time of every step's start, written to `directory` at the end.

    Module level, so spawned workers can unpickle it.
    """

    def __init__(self, directory):
        self.directory, self.stamps = str(directory), []

    def on_train_begin(self, model):
        self.stamps = []

    def on_step_begin(self, model, step):
        self.stamps.append(time.perf_counter())

    def on_epoch_end(self, model, epoch, logs):
        pass

    def on_train_end(self, model, history):
        path = Path(self.directory) / f"{os.getpid()}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(self.stamps))


def build(width, seed=0):
    """The benchmark model, compiled with plain SGD (float32)."""
    import minscale as ms

    model = ms.Sequential([ms.Dense(width, "relu"), ms.Dense(width, "relu"),
                           ms.Dense(width, "relu"), ms.Dense(16)],
                          input_dim=width, seed=seed, dtype="float32")
    return model.compile(optimizer=ms.optim.SGD(1e-4))


def step_time(directory):
    """Median gap after warm-up of the slowest process's stamps; the files are then removed."""
    medians = []
    for path in Path(directory).glob("*.json"):
        stamps = json.loads(path.read_text())
        gaps = np.diff(stamps)[WARMUP:]
        medians.append(float(np.median(gaps)))
        path.unlink()
    return max(medians)


def run(rounds=3, steps=8, width=2048, batch=128):
    """Measure every candidate `rounds` times, interleaved; return the results dict."""
    rng = np.random.default_rng(0)
    n = batch * steps
    X = rng.standard_normal((n, width), dtype=np.float32)
    y = rng.standard_normal((n, 16), dtype=np.float32)
    directory = tempfile.mkdtemp(prefix="tp_bench_")
    stamps = StepStamps(directory)

    def train(**kwargs):
        model = build(width)
        model.fit(X, y, epochs=1, batch_size=batch, shuffle=False, callbacks=[stamps], **kwargs)
        return step_time(directory)

    def single(threads):
        with common.threads(threads):
            return train()

    candidates = {
        "single_1t": lambda: single(1),
        "single_2t": lambda: single(2),
        "tensor_2": lambda: train(tensor_parallel=2),
        "data_2": lambda: train(workers=2),
    }
    for fn in candidates.values():  # untimed: imports, JIT, first allocations
        fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(fn())
    os.rmdir(directory)
    P = build(width).count_params()
    return {
        "model": f"{width}-{width}-{width}-{width}-16 relu, float32, SGD",
        "params": P,
        "global_batch": batch,
        "steps_per_run": steps,
        "rounds": rounds,
        "step_seconds": {name: common.summary(t) for name, t in times.items()},
        "speedup_vs_single_1t": {name: common.summary([a / b for a, b in
                                                       zip(times["single_1t"], t)])
                                 for name, t in times.items() if name != "single_1t"},
        "allreduced_values_per_step": {"tensor_2": 3 * batch * width, "data_2": P},
        "median_step_seconds": {name: statistics.median(t) for name, t in times.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.steps <= WARMUP + 1:
        parser.error(f"--steps must be more than {WARMUP + 1}")
    result = run(args.rounds, args.steps, args.width, args.batch)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
