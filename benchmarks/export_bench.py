"""Export: inference latency per row of the generated C on this host, against minscale's own
integer path (NumPy and Numba backends) and onnxruntime's exact integer graph, in one run;
plus the rounding facts the export documents (single vs double rounding, QDQ disagreement)
and, when arm-none-eabi-gcc is installed, the Cortex-M4 sizes.

Run: ``python -m benchmarks.export_bench [--rounds 5] [--json out.json]``.

Model: digits (64 features, 10 classes), 64 -> 32 (relu) -> 10, trained 20 epochs; int8
per-channel (dense and 90 % pruned) and fixed8. Latency per row = one call per row, every
held-out row (360) in turn, median of `rounds` samples taken interleaved (C, NumPy, Numba,
onnxruntime, C, ...); the first call of everything is discarded. onnxruntime runs the exact
integer graph (``minscale.export.to_onnx(mode="integer")``) of each model. onnxruntime and NumPy run
with one thread; the C program is compiled with ``cc -std=c99 -pedantic -Wall -Wextra
-Werror -O2`` and times its own loop (``clock()``, repeated to >= 0.2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time

import numpy as np


def _digits_models():
    import minscale as ms
    from minscale.data import one_hot, standardize, train_test_split
    from minscale.quant import quantize_fixed_model
    X, y, _ = ms.datasets.load("digits")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    m = ms.Sequential([ms.Dense(32, activation="relu"), ms.Dense(10)], input_dim=64, seed=0)
    m.compile(loss="mse", optimizer="adam")
    m.fit(X_tr, one_hot(y_tr, 10), epochs=20, batch_size=32, seed=0, verbose=0)
    pruned = m.copy()
    ms.prune.prune(pruned, 0.9, method="global")
    models = {
        "int8": ms.quant.quantize_model(m, calibration_data=X_tr),
        "int8, 90 % pruned": ms.quant.quantize_model(pruned, calibration_data=X_tr),
        "fixed8": quantize_fixed_model(m, "fixed8", "fixed8", X_tr),
    }
    return m, models, X_tr, X_te, y_te


def _per_row(fn, rows):
    t = time.perf_counter()
    for r in rows:
        fn(r)
    return (time.perf_counter() - t) / len(rows)


def run(rounds=5):
    from threadpoolctl import threadpool_limits

    import minscale as ms
    from minscale.export.harness import cortex_m4_size, find_compiler, run_c
    from minscale.export.onnx_export import onnx_model, qdq_disagreement

    m, models, X_tr, X_te, y_te = _digits_models()
    rows = [X_te[i:i + 1] for i in range(X_te.shape[0])]
    out = {"host": platform.machine(), "python": platform.python_version(),
           "rows": len(rows), "latency": {}, "ratios": {}}

    # --- C: one program, the timed loop inside it; repeat so a sample lasts >= 0.2 s
    jobs = [{"model": q, "inputs": q.quantize_input(X_te), "name": f"m{i}"}
            for i, q in enumerate(models.values())]
    c_samples = {name: [] for name in models}
    if find_compiler() is None:
        raise SystemExit("no C compiler")
    probe = run_c(jobs, repeat=1)
    repeat = max(1, int(0.2 / max(min(r["seconds_per_row"] for r in probe), 1e-9) / len(rows)))

    # --- onnxruntime sessions (one thread) on the exact integer graph
    ort_sessions = {}
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        for name, q in models.items():  # every model has an exact integer graph
            sess = ort.InferenceSession(onnx_model(q).SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            codes = q.quantize_input(X_te)
            ort_sessions[name] = (sess, [codes[i:i + 1] for i in range(len(codes))])
    except ImportError:
        pass

    py = {f"{b} {name}": [] for b in ("numpy", "numba") for name in models}
    ort_s = {name: [] for name in ort_sessions}
    with threadpool_limits(1):
        for backend in ("numpy", "numba"):  # warm-up: JIT, packing, lazy imports
            ms.set_backend(backend)
            for q in models.values():
                q.predict_codes(rows[0])
        for _ in range(rounds):
            for name, res in zip(models, run_c(jobs, repeat=repeat)):
                c_samples[name].append(res["seconds_per_row"])
            for backend in ("numpy", "numba"):
                ms.set_backend(backend)
                for name, q in models.items():
                    py[f"{backend} {name}"].append(_per_row(q.predict_codes, rows))
            for name, (sess, codes) in ort_sessions.items():
                ort_s[name].append(_per_row(lambda c, sess=sess: sess.run(None, {"input_codes": c}),
                                            codes))
    ms.set_backend(None)
    med = statistics.median
    for name in models:
        c = med(c_samples[name])
        entry = {"c": c, "numpy": med(py[f"numpy {name}"]), "numba": med(py[f"numba {name}"])}
        if name in ort_s:
            entry["onnxruntime"] = med(ort_s[name])
        out["latency"][name] = entry
        out["ratios"][name] = {k: v / c for k, v in entry.items() if k != "c"}

    # --- rounding facts on digits (all held-out rows)
    q = models["int8"]
    d = q.predict_codes(X_te, requantize_rounding="double").astype(int)
    s = q.predict_codes(X_te, requantize_rounding="single").astype(int)
    X_all = np.concatenate([X_tr, X_te])
    d_all = q.predict_codes(X_all, requantize_rounding="double").astype(int)
    s_all = q.predict_codes(X_all, requantize_rounding="single").astype(int)
    out["single_vs_double"] = {
        "held_out_fraction": float(np.mean(d != s)), "held_out_max_abs": int(np.abs(d - s).max()),
        "all_rows_fraction": float(np.mean(d_all != s_all)),
        "all_rows_max_abs": int(np.abs(d_all - s_all).max()), "n_all": int(d_all.size)}
    # per requantization: each layer fed the same input codes, both roundings
    from minscale.quant import int_matmul, requantize
    xq = q.quantize_input(X_all)
    per_layer = []
    for layer in q.layers:
        acc = int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
        outs = [requantize(acc, layer.multiplier, layer.shift, layer.output_qparams[1],
                           relu=layer.activation == "relu", bias=layer.bias_codes, rounding=r)
                for r in ("double", "single")]
        per_layer.append(float(np.mean(outs[0] != outs[1])))
        xq = outs[0]
    out["single_vs_double"]["per_layer_fraction"] = per_layer
    try:
        out["qdq_vs_double"] = {name: qdq_disagreement(qm, X_te)
                                for name, qm in models.items() if name.startswith("int8")}
    except ImportError:
        pass

    # --- Cortex-M4 sizes
    if shutil.which("arm-none-eabi-gcc") and shutil.which("arm-none-eabi-size"):
        out["cortex_m4"] = {name: cortex_m4_size(qm, name="digits")
                            for name, qm in models.items()}
    return out


def format_report(out):
    lines = [f"export latency per row on {out['host']} ({out['rows']} digits rows, one call "
             "per row, median):"]
    lines.append(f"{'model':<20}{'C':>10}{'NumPy':>12}{'Numba':>12}{'onnxruntime':>14}"
                 f"{'NumPy/C':>10}{'Numba/C':>10}{'ORT/C':>8}")
    for name, e in out["latency"].items():
        r = out["ratios"][name]
        ort_t = f"{e['onnxruntime'] * 1e6:>12.2f}us" if "onnxruntime" in e else f"{'-':>14}"
        ort_r = f"{r['onnxruntime']:>8.0f}" if "onnxruntime" in r else f"{'-':>8}"
        lines.append(f"{name:<20}{e['c'] * 1e6:>8.3f}us{e['numpy'] * 1e6:>10.1f}us"
                     f"{e['numba'] * 1e6:>10.1f}us{ort_t}{r['numpy']:>10.0f}{r['numba']:>10.0f}"
                     f"{ort_r}")
    sd = out["single_vs_double"]
    lines.append(f"single vs double rounding (digits int8): {sd['held_out_fraction']:.2%} of "
                 f"held-out output codes differ (max {sd['held_out_max_abs']}); all "
                 f"{sd['n_all']} output codes of the 1797 rows: {sd['all_rows_fraction']:.2%} "
                 f"(max {sd['all_rows_max_abs']})")
    lines.append("  per requantization (same input codes): " + ", ".join(
        f"layer {i} {f:.2%}" for i, f in enumerate(sd["per_layer_fraction"])))
    for name, rep in out.get("qdq_vs_double", {}).items():
        lines.append(f"QDQ graph on onnxruntime vs minscale ({name}): {rep['fraction']:.2%} of "
                     f"output codes differ, max {rep['max_abs']}, {rep['rows_fraction']:.1%} "
                     "of rows")
    for name, size in out.get("cortex_m4", {}).items():
        lines.append(f"Cortex-M4 -Os {name}: text {size['text']:,} data {size['data']} bss "
                     f"{size['bss']} (onnx2c's published sine MLP: text 8,236, bss 388)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = run(args.rounds)
    print(format_report(out))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
