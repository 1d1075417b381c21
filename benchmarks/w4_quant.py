"""W4, quantization: (a) 10 M float32 values to int8 per tensor (scale 0.02, zero point 3),
round half to even, against ``torch.quantize_per_tensor`` and against memcpy bandwidth, counting
the bytes moved (4 read + 1 written per value); the fused kernel and the public
``minscale.quant.quantize_affine`` (which also checks for NaN) are both timed.
(b) integer-only dense 1024 -> 1024 at batch 256: int8 activations (zero point -5) times int8
narrow-range weights, int32 accumulation, bias, requantization to int8 (gemmlowp rounding):
``kernels.int8_dense_packed`` on weights packed once (``kernels.pack_int8_weights``, as a
quantized model holds them; the unpacked ``int8_matmul`` + ``requantize`` pair is timed too),
against the float32 dense ``x @ W + b``, torch's dynamic-quantized Linear, and NumPy's own
int8 ``@`` (which is not even correct: it wraps in int8).
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W4 quantization and integer-only dense"
N_VALUES = 10_000_000


def run(ctx):
    import minscale as ms
    from minscale import kernels, quant

    torch = common.torch_module()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N_VALUES, dtype=np.float32)
    x3 = x.reshape(1, 1, -1)
    scale, zp = np.array([0.02]), np.array([3], dtype=np.int64)
    codes = np.empty(x3.shape, dtype=np.int8)
    dst = np.empty_like(x)

    def q_kernel(backend):
        def f():
            ms.set_backend(backend)
            kernels.quantize_affine(x3, scale, zp, -128, 127, 0, codes)
        return f

    def q_public():
        ms.set_backend("numba")
        quant.quantize_affine(x, 0.02, 3)

    def memcpy():
        np.copyto(dst, x)

    # integer dense
    n, d_in, d_out = 256, 1024, 1024
    a = rng.integers(-128, 128, size=(n, d_in)).astype(np.int8)
    w = rng.integers(-127, 128, size=(d_in, d_out)).astype(np.int8)
    bias = rng.integers(-2000, 2000, size=d_out).astype(np.int32)
    zb = np.zeros(d_out, dtype=np.int64)
    m0, shift = quant.quantize_multiplier(0.0007)
    m0a, sha = np.array([m0], dtype=np.int64), np.array([shift], dtype=np.int64)
    acc = np.empty((n, d_out), dtype=np.int32)
    out = np.empty((n, d_out), dtype=np.int8)
    xf = rng.standard_normal((n, d_in), dtype=np.float32)
    wf = rng.standard_normal((d_in, d_out), dtype=np.float32)
    bf = rng.standard_normal(d_out, dtype=np.float32)

    packed = kernels.pack_int8_weights(w, zb)  # once, as a quantized model holds its weights

    def int_dense(backend):
        def f():
            ms.set_backend(backend)
            kernels.int8_dense_packed(a, packed, -5, bias, m0a, sha, 0, -128, 127, out)
        return f

    def int_dense_unpacked():
        # the two-kernel path without a pack (converts the weights on every call)
        ms.set_backend("numba")
        kernels.int8_matmul(a, w, -5, zb, acc)
        kernels.requantize(acc, bias, m0a, sha, 0, -128, 127, out)

    def float_dense():
        y = xf @ wf
        y += bf

    cands_q = {"quantize-numba kernel": q_kernel("numba"),
               "quantize-numpy kernel": q_kernel("numpy"),
               "quant.quantize_affine (numba)": q_public, "memcpy": memcpy}
    cands_d = {"int-dense-numba": int_dense("numba"), "float32-dense": float_dense,
               "int-dense-numpy": int_dense("numpy"),
               "int-dense-numba unpacked": int_dense_unpacked}
    if torch:
        xt = torch.from_numpy(x)
        cands_q["torch.quantize_per_tensor"] = lambda: torch.quantize_per_tensor(
            xt, 0.02, 3, torch.qint8)
        lin = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
        qlin = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
        xft = torch.from_numpy(xf)

        def torch_dyn():
            with torch.no_grad():
                qlin(xft)
        cands_d["torch dynamic int8 Linear"] = torch_dyn
    ops = 2 * n * d_in * d_out
    result = {"name": NAME, "quantize": {"n": N_VALUES, "threads": {}},
              "dense": {"shape": [n, d_in, d_out], "ops": ops, "threads": {}}}
    for nt in ctx["threads"]:
        with common.threads(nt):
            c2c = ctx["probe"].sample() if nt > 1 else None
            tq = common.interleaved(cands_q, ctx["rounds"])
            td = common.interleaved(cands_d, ctx["rounds"])
            if nt == 1:
                # NumPy's own integer matmul: no BLAS, single-threaded, slow -> 2 samples
                tnp = [common.time_once(lambda: a @ w) for _ in range(2)]
        moved = 5 * N_VALUES
        eq = {"times": {k: common.summary(v) for k, v in tq.items()},
              "gbs": {k: common.summary([moved / t / 1e9 for t in v]) for k, v in tq.items()
                      if k != "memcpy"},
              "memcpy_gbs": common.summary([8 * N_VALUES / t / 1e9 for t in tq["memcpy"]])}
        eq["fraction_of_memcpy"] = eq["gbs"]["quantize-numba kernel"]["median"] / \
            eq["memcpy_gbs"]["median"]
        eq["fraction_of_memcpy_public"] = eq["gbs"]["quant.quantize_affine (numba)"]["median"] \
            / eq["memcpy_gbs"]["median"]
        if torch:
            eq["ratios"] = {"torch/numba kernel": common.ratios(tq, "torch.quantize_per_tensor",
                                                                "quantize-numba kernel"),
                            "torch/public": common.ratios(tq, "torch.quantize_per_tensor",
                                                          "quant.quantize_affine (numba)")}
        ed = {"times": {k: common.summary(v) for k, v in td.items()},
              "gops": {k: common.summary([ops / t / 1e9 for t in v]) for k, v in td.items()},
              "ratios": {"int/float32 throughput": common.ratios(td, "float32-dense",
                                                                  "int-dense-numba"),
                         "unpacked int/float32 throughput": common.ratios(
                             td, "float32-dense", "int-dense-numba unpacked")}}
        if torch:
            ed["ratios"]["int/torch dynamic throughput"] = common.ratios(
                td, "torch dynamic int8 Linear", "int-dense-numba")
        if nt == 1:
            ed["numpy_int8_matmul_s"] = common.summary(tnp)
            ed["speedup_vs_numpy_int8_matmul"] = common.summary(tnp)["median"] / \
                ed["times"]["int-dense-numba"]["median"]
        if c2c is not None:
            eq["c2c_ns"] = ed["c2c_ns"] = c2c
        result["quantize"]["threads"][str(nt)] = eq
        result["dense"]["threads"][str(nt)] = ed
    ms.set_backend(None)
    return result


def targets(result):
    """W4 targets: quantize >= 70% memcpy and >= 0.8x torch; integer dense >= 0.9x float32
    dense at equal threads and >= 100x NumPy's int8 @."""
    out = []
    for nt, e in result["quantize"]["threads"].items():
        out.append({"target": f"W4 quantize >= 70% of memcpy bandwidth (t{nt})",
                    "value": e["fraction_of_memcpy"], "goal": 0.7,
                    "met": e["fraction_of_memcpy"] >= 0.7})
        if "ratios" in e:
            r = e["ratios"]["torch/numba kernel"]["median"]
            out.append({"target": f"W4 quantize >= 0.8x torch.quantize_per_tensor speed (t{nt})",
                        "value": r, "goal": 0.8, "met": r >= 0.8})
    for nt, e in result["dense"]["threads"].items():
        r = e["ratios"]["int/float32 throughput"]["median"]
        out.append({"target": f"W4 integer dense >= 0.9x float32 dense throughput (t{nt})",
                    "value": r, "goal": 0.9, "met": r >= 0.9})
        if "speedup_vs_numpy_int8_matmul" in e:
            r = e["speedup_vs_numpy_int8_matmul"]
            out.append({"target": "W4 integer dense >= 100x NumPy int8 @ (t1)", "value": r,
                        "goal": 100.0, "met": r >= 100.0})
    return out
