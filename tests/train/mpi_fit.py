"""Run under ``mpiexec -n K``: ``model.fit(..., comm=MPIComm())`` on the cases of
tests/train/test_workers.py; also importable, so the test builds the same single-process oracle.

Usage: ``mpiexec -n 2 python tests/train/mpi_fit.py OUT_DIR``. Each rank saves its final parameters
as ``OUT_DIR/<case>_rank<r>.npy`` and the seconds the fit took as ``<case>_rank<r>.seconds``.
"""

import sys
import time
from pathlib import Path

import numpy as np


def equivalence_case():
    """23 rows, global batch 7 (4 batches per epoch: 7, 7, 7, 2), 5 epochs = 20 updates.

    With 2 ranks the shards are 4/3 rows and 1/1 on the last batch; with 3 ranks 3/2/2 and
    1/1/0 (an empty shard). Adam with inverse-time decay and a partly pruned mask.
    """
    import minscale as ms
    from minscale.optim import Adam
    from minscale.schedules import InverseTimeDecay

    rng = np.random.default_rng(20240601)
    X = rng.standard_normal((23, 3))
    y = np.column_stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], X[:, 0] - 0.5 * X[:, 2]])
    model = ms.Sequential([ms.Dense(6, activation="tanh"), ms.Dense(2)], input_dim=3, seed=7)
    model.compile(optimizer=Adam(learning_rate=InverseTimeDecay(0.05, decay_rate=0.5, decay_steps=5)))
    # A fixed mask: masked weights must stay exactly 0 on every rank.
    model.mask[[0, 4, 9]] = False
    model.params[~model.mask] = 0.0
    fit_kwargs = dict(epochs=5, batch_size=7, seed=11, shuffle=True)
    return model, X, y, fit_kwargs


def five_samples_case():
    """x = [1..5], y = 2x, y_hat = w x from w = 0, SGD lr 0.01, global batch 4: 2 workers get
    2 rows each in batch 1, then 1 row and an empty shard in batch 2 -- 2 updates for everyone."""
    import minscale as ms
    from minscale.optim import SGD

    X = np.arange(1.0, 6.0).reshape(-1, 1)
    y = 2.0 * X
    model = ms.Sequential([ms.Dense(1, use_bias=False)], input_dim=1, seed=0)
    model.params[:] = 0.0
    model.compile(optimizer=SGD(learning_rate=0.01))
    fit_kwargs = dict(epochs=1, batch_size=4, shuffle=False)
    return model, X, y, fit_kwargs


def regularized_case():
    """The equivalence case with L2 kernel regularizers and AdamW (decoupled, kernels only):
    the L2 gradient must be added once per update, after the allreduce, not once per rank."""
    import minscale as ms
    from minscale.optim import AdamW

    model, X, y, fit_kwargs = equivalence_case()
    for layer in model.layers:
        layer.kernel_regularizer = ms.regularizers.L2(0.01)
    model.compile(optimizer=AdamW(0.02, weight_decay=0.1, decay_bias=False))
    return model, X, y, fit_kwargs


CASES = {"equivalence": equivalence_case, "five": five_samples_case,
         "regularized": regularized_case}


def main(out_dir):
    from minscale.parallel import MPIComm

    comm = MPIComm()
    for name, build in CASES.items():
        model, X, y, fit_kwargs = build()
        start = time.monotonic()
        model.fit(X, y, comm=comm, **fit_kwargs)
        seconds = time.monotonic() - start
        np.save(Path(out_dir, f"{name}_rank{comm.rank}.npy"), model.params)
        Path(out_dir, f"{name}_rank{comm.rank}.seconds").write_text(repr(seconds))


if __name__ == "__main__":
    main(sys.argv[1])
