"""``minscale demo``: the classic example end to end, then a quick study on real data.

The classic example: y = 2x + 1 + N(0, 1) noise on 100 points, one Dense unit, Adam at 0.1,
100 epochs of batches of 10 rows in file order. The demo prints the learned w and b beside
the least-squares line, sweeps the learning rate, prunes and quantizes that model, and ends
with ``minscale study --quick`` on the diabetes data.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .. import report, study
from ..datasets import make_linear
from ..layers import Dense
from ..losses import mse
from ..model import Sequential
from ..optim import Adam
from ..prune import prune, random_mask
from ..quant import QFormat, choose_frac_bits, quantize
from ._common import load_task
from ._common import seed as seed_option

NAME = "demo"
HELP = "the classic y = 2x + 1 example end to end, then a quick study on diabetes"

#: samples and seed of the classic data (the legacy np.random.seed(42) script)
N_SAMPLES, DATA_SEED = 100, 42
#: the classic training run
LEARNING_RATE, EPOCHS, BATCH_SIZE = 0.1, 100, 10
#: fine-tuning epochs after pruning the classic model
FINETUNE_EPOCHS = 20
#: random masks drawn for the "random" rule
RANDOM_SEEDS = 10


def add_arguments(parser):
    """Register the demo's options on `parser`."""
    parser.add_argument("--seed", type=seed_option, default=0,
                        help="seed of the initial weights, random masks and the study's split "
                             "(default: %(default)s); the classic data always use seed 42")
    parser.add_argument("--no-study", action="store_true",
                        help="stop after the classic example (skip the quick diabetes study)")


def least_squares_line(X, y):
    """Slope and intercept minimizing sum (y - (w x + b))^2.

    Parameters
    ----------
    X : ndarray, shape (n, 1)
    y : ndarray, shape (n, 1)

    Returns
    -------
    (w, b) : (float, float)

    Notes
    -----
    [w, b] = argmin ||[X, 1] [w, b]^T - y||^2, solved by ``numpy.linalg.lstsq`` (SVD).
    """
    A = np.hstack([X, np.ones_like(X)])
    (w, b), *_ = np.linalg.lstsq(A, y[:, 0], rcond=None)
    return float(w), float(b)


def _mse(X, y, w, b):
    return float(mse(y, X * w + b))


def _classic_model(seed):
    model = Sequential([Dense(1)], input_dim=1, seed=seed, dtype="float64")
    model.compile(loss="mse", optimizer=Adam(learning_rate=LEARNING_RATE))
    return model


def _wb(model):
    return float(model.layers[0].W[0, 0]), float(model.layers[0].b[0])


def _classic(seed, out):
    """Train the classic model and print it beside least squares; return (model, X, y)."""
    X, y = make_linear(N_SAMPLES, seed=DATA_SEED)
    model = _classic_model(seed)
    model.fit(X, y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=False, seed=seed)
    w, b = _wb(model)
    w_ls, b_ls = least_squares_line(X, y)
    out(f"1. The classic example: y = 2x + 1 + N(0, 1) on {N_SAMPLES} points "
        f"(make_linear({N_SAMPLES}, seed={DATA_SEED})), one Dense unit,")
    out(f"   Adam({LEARNING_RATE}), {EPOCHS} epochs, batch {BATCH_SIZE}, rows in file order "
        f"(shuffle=False), initial weights seed {seed}")
    rows = [["learned (minscale)", f"{w:.4f}", f"{b:.4f}", f"{_mse(X, y, w, b):.4f}"],
            ["least squares", f"{w_ls:.4f}", f"{b_ls:.4f}", f"{_mse(X, y, w_ls, b_ls):.4f}"],
            ["generating line", "2", "1", f"{_mse(X, y, 2.0, 1.0):.4f}"]]
    out(report.format_table(["line", "w", "b", "MSE on the 100 points"], rows))
    out(f"   |learned - least squares|: w {abs(w - w_ls):.4f}, b {abs(b - b_ls):.4f}. Least "
        "squares is the best line for these 100 points; it differs from (2, 1) by sampling "
        "noise")
    return model, X, y


def _sweep(seed, X, y, out):
    """The learning-rate grid on the classic model, loss target 1% above least squares."""
    w_ls, b_ls = least_squares_line(X, y)
    floor = _mse(X, y, w_ls, b_ls)
    target = 1.01 * floor

    def make():
        return _classic_model(seed)

    runs, _, _ = study.learning_rate_sweep(make, X, y, (X, y), (0.1, 0.01, 0.001),
                                           (0.0, 0.1, 1.0), EPOCHS, BATCH_SIZE, seed=seed,
                                           shuffle=False, target=target)
    out("")
    out(f"2. Learning rate: Adam with inverse-time decay, eta(t) = eta0 / (1 + decay * t / 10) "
        f"(per epoch of 10 updates), {EPOCHS} epochs each;")
    out(f"   target: MSE on the 100 points <= 1.01 x the least-squares MSE = {target:.4f}, "
        "checked at the end of each epoch")
    rows = []
    for r in runs:
        reached = ("diverged" if r["diverged"] else "not reached" if r["target_update"] is None
                   else f"update {r['target_update']:,} (epoch {r['target_epoch']})")
        rows.append([f"{r['initial_learning_rate']:g}", f"{r['decay_rate']:g}",
                     report.format_number(r["final_loss"], 5), reached])
    out(report.format_table(["eta0", "decay", "final MSE", "target reached at"], rows,
                     "rrrl"))
    return runs


def _pruning(model, X, y, seed, out):
    """Magnitude vs random pruning of one of the model's two parameters, then fine-tuning."""
    out("")
    out("3. Pruning the classic model: sparsity 0.5 over its two parameters w and b removes "
        "one of them;")
    out(f"   the other is then fine-tuned for {FINETUNE_EPOCHS} epochs (Adam 0.1, the pruned "
        "one held at 0)")

    def finish(m):
        name = "w" if not m.mask[0] else "b"
        before = m.evaluate(X, y)
        m.fit(X, y, epochs=FINETUNE_EPOCHS, batch_size=BATCH_SIZE, shuffle=False, seed=seed)
        return name, before, m.evaluate(X, y)

    m = model.copy()
    # one magnitude ranking over both parameters (per tensor, half of one entry rounds to 0)
    prune(m, 0.5, method="global", include_bias=True)
    rows = [["none", "-", f"{model.evaluate(X, y):.4f}", "-"]]
    name, before, after = finish(m)
    rows.append(["magnitude", name, f"{before:.4f}", f"{after:.4f}"])
    draws = []
    for i in range(RANDOM_SEEDS):
        m = model.copy()
        # the random rule drawn over the flat [w, b] buffer, written as the model's mask
        keep = random_mask(m.params.shape, 0.5, seed=seed + i)
        m.mask[...] = keep
        m.params[~keep] = 0.0
        draws.append(finish(m))
    n_w = sum(d[0] == "w" for d in draws)
    rows.append([f"random, mean of seeds {seed}..{seed + RANDOM_SEEDS - 1}",
                 f"w {n_w}x, b {RANDOM_SEEDS - n_w}x",
                 f"{np.mean([d[1] for d in draws]):.4f}",
                 f"{np.mean([d[2] for d in draws]):.4f}"])
    out(report.format_table(["rule", "pruned", "MSE after pruning", "after fine-tuning"], rows,
                     "llrr"))
    w, b = _wb(model)
    x, t = X[:, 0], y[:, 0]
    through_origin = float(mse(t[:, None], (x * (x @ t / (x @ x)))[:, None]))
    out(f"   magnitude removes the parameter of smaller |value|: b (|b| = {abs(b):.4f} < |w| = "
        f"{abs(w):.4f}). Yet without b the best line")
    out(f"   through 0 has MSE {through_origin:.4f}, while without w the best constant, mean(y), "
        f"has MSE var(y) = {float(np.var(t)):.4f}:")
    out("   magnitude stands in for importance, and between a weight and a bias it picks the "
        "wrong one here.")


def _quantization(model, X, y, out):
    """8-bit fixed point (frac bits chosen per tensor) and int8 affine of the classic model."""
    out("")
    out("4. 8-bit quantization of the classic model")
    w, b = _wb(model)
    rows = [["float64", f"{w:.6f}", f"{b:.6f}", "-", f"{model.evaluate(X, y):.6f}"]]
    q = model.copy()
    codes = []
    for name, arr in (("w", q.layers[0].W), ("b", q.layers[0].b)):
        f = choose_frac_bits(arr, 8)
        fmt = QFormat(8, f)
        code = int(quantize(arr, fmt).ravel()[0])
        arr[...] = code * fmt.step
        codes.append(f"{name}: {fmt.name} code {code}")
    wq, bq = _wb(q)
    rows.append(["fixed point, 8 bits", f"{wq:.6f}", f"{bq:.6f}", "; ".join(codes),
                 f"{q.evaluate(X, y):.6f}"])
    qmodel, description = study.int8_model(model, X)
    y_hat = qmodel.predict(X)
    rows.append(["int8 affine", "-", "-", description,
                 f"{float(mse(y.astype(y_hat.dtype), y_hat)):.6f}"])
    out(report.format_table(["model", "w", "b", "codes", "MSE"], rows, "lrrlr"))
    out("   fixed point: code = round(value * 2**frac_bits), frac_bits the largest that does "
        "not saturate;")
    out("   int8: integer-only inference (int8 input, weights and output, int32 accumulator "
        "and bias)")


def _study(seed, out):
    """``minscale study --quick`` on the diabetes data, printed."""
    out("")
    out("5. A quick study on real data: minscale study --data diabetes --quick "
        f"--seed {seed}")
    out("")
    config = study.StudyConfig.preset(quick=True, seed=seed)
    task = load_task(argparse.Namespace(data="diabetes", target=None, test_size=0.2,
                                        seed=seed), validation_size=config.validation_size)
    result = study.run_study(task, config)
    out(report.render_text(result).rstrip("\n"))
    return result


def run(args):
    """Run the demo; print everything on stdout."""
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    t0 = time.perf_counter()

    def out(line=""):
        print(line, flush=True)

    model, X, y = _classic(args.seed, out)
    _sweep(args.seed, X, y, out)
    _pruning(model, X, y, args.seed, out)
    _quantization(model, X, y, out)
    if not args.no_study:
        _study(args.seed, out)
    out("")
    out(f"demo finished in {time.perf_counter() - t0:.1f} s")
    sys.stdout.flush()
    return 0
