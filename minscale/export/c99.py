"""C99 export: a header and a source file that compute the model with no malloc and no libm.

``to_c(model, directory, name)`` writes ``name.h`` (the macros ``NAME_INPUT_SIZE``,
``NAME_OUTPUT_SIZE``, ``NAME_SCRATCH_SIZE``, the sizes and the prototype) and ``name.c`` (the
weights as ``static const`` arrays, the layer table, one static scratch buffer and
``name_predict``). An integer model (:class:`minscale.quant.QuantizedModel`, integer-only)
computes, per layer and output unit ``j``::

    acc  = sum_k (x[k] - input_zero_point) * Wt[j, k]          (int32, exact)
    y[j] = clamp(requantize(acc + bias[j], M0[j], shift[j]) + output_zero_point, lower, upper)

with the requantization of :func:`minscale.quant.multiply_by_quantized_multiplier` in the chosen
rounding (gemmlowp double or TFLite single), written with 64-bit integers, C99's truncating
division and a portable arithmetic right shift (a right shift of a negative signed value is
implementation-defined in C99, so it is written ``~(~v >> s)``). These are the operations of
:meth:`QuantizedModel.predict_codes` in the same order, so the outputs are equal bit for bit.
A float :class:`minscale.Sequential` is written in float32 with ``float name_predict``.
"""
from __future__ import annotations

import errno
import os

import numpy as np

from .._version import __version__
from ..io import atomic_write
from ..model import Sequential
from ..quant import FixedPointModel
from .layout import LAYOUTS, choose_layout, encode, index_dtype, layout_nbytes
from .plan import check_name, fixed_plan, float_plan, integer_plan

__all__ = ["to_c", "c_sources", "c_size_report", "ROUNDINGS", "TABLE_ENTRY_BYTES"]

ROUNDINGS = ("double", "single")

# A layer-table entry on a 32-bit target: 7 pointers and 8 int32 fields, 4 bytes each, no
# padding (every member is 4-byte aligned).
TABLE_ENTRY_BYTES = 60
# fixed point: 5 pointers and 6 int32 fields
FIXED_TABLE_ENTRY_BYTES = 44

_ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4}
_CTYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t",
           np.dtype(np.uint16): "uint16_t", np.dtype(np.uint32): "uint32_t",
           np.dtype(np.float32): "float"}


def _plan(model, kind):
    if kind not in (None, "integer", "float"):
        raise ValueError(f"kind must be 'integer', 'float' or None, got {kind!r}")
    if isinstance(model, FixedPointModel) and kind in (None, "integer"):
        return fixed_plan(model)
    if kind == "integer" or (kind is None and not isinstance(model, Sequential)):
        return integer_plan(model)
    return float_plan(model)


def _value_bytes(plan):
    return {"integer": 1, "fixed": plan.bits // 8, "float": 4}[plan.kind]


def _layouts(plan):
    """Per layer the chosen :class:`~minscale.export.layout.Encoded`, and the index dtype."""
    max_index = max(max(layer.Wt.shape[1] - 1, int(np.count_nonzero(layer.Wt)))
                    for layer in plan.layers)
    idx = index_dtype(max_index)
    value_bytes = _value_bytes(plan)
    out = []
    for layer in plan.layers:
        out.append(encode(layer.Wt, choose_layout(layer.Wt, value_bytes, idx.itemsize), idx))
    return out, idx


def _per_channel(arr):
    """The array, or its one value when all are equal (per-tensor parameters store one)."""
    return arr[:1] if np.all(arr == arr[0]) else arr


def c_size_report(model, kind=None):
    """Flash and RAM bytes of the C export of `model`.

    Parameters
    ----------
    model : QuantizedModel or Sequential
    kind : {"integer", "float"} or None
        None: integer for a QuantizedModel, float for a Sequential.

    Returns
    -------
    dict
        ``weights`` (stored values), ``index`` (bitmasks, CSR indices and row pointers),
        ``biases`` (int32 codes or float32), ``scales`` (int32 ``M0`` and int8 shift per stored
        channel), ``table`` (``TABLE_ENTRY_BYTES`` per layer, 32-bit pointers), ``flash`` (their
        sum: every ``static const`` byte), ``ram`` (the scratch buffer), ``layouts`` (per layer),
        ``index_bytes`` (width of the CSR index type), ``kind``.

    Raises
    ------
    TypeError, ValueError
        As :func:`to_c`.

    Notes
    -----
    The code itself is not counted (compile with ``arm-none-eabi-size`` for the text total).
    """
    plan = _plan(model, kind)
    encs, idx = _layouts(plan)
    vb = _value_bytes(plan)
    rep = {"weights": 0, "index": 0, "biases": 0, "scales": 0}
    for layer, enc in zip(plan.layers, encs):
        nnz = int(np.count_nonzero(layer.Wt))
        total = layout_nbytes(enc.layout, layer.Wt.shape, nnz, vb, idx.itemsize)
        values = enc.values.size * vb
        rep["weights"] += values
        rep["index"] += total - values
        if np.any(layer.bias != 0):
            rep["biases"] += (8 if plan.kind == "fixed" and plan.bits == 16 else 4) \
                * layer.bias.size
        if plan.kind == "integer":
            rep["scales"] += 5 * max(_per_channel(layer.multiplier).size,
                                     _per_channel(layer.shift).size)
    rep["table"] = (FIXED_TABLE_ENTRY_BYTES if plan.kind == "fixed" else TABLE_ENTRY_BYTES) \
        * len(plan.layers)
    rep["flash"] = sum(rep[k] for k in ("weights", "index", "biases", "scales", "table"))
    rep["ram"] = plan.scratch_size * vb
    rep["layouts"] = [e.layout for e in encs]
    rep["index_bytes"] = idx.itemsize
    rep["kind"] = plan.kind
    return rep


def _literal(v, ctype):
    if ctype == "float":
        return f"{float(v):.8e}f"
    v = int(v)
    if ctype == "int32_t" and v == -(2**31):
        return "(-2147483647 - 1)"
    return str(v)


def _array(name, values, ctype, comment=None):
    items = [_literal(v, ctype) for v in np.asarray(values).reshape(-1)]
    lines = []
    if comment:
        lines.append(f"/* {comment} */")
    lines.append(f"static const {ctype} {name}[{len(items)}] = {{")
    per_line = 6 if ctype == "float" else 16
    for start in range(0, len(items), per_line):
        lines.append("    " + ", ".join(items[start:start + per_line]) + ",")
    lines.append("};")
    return "\n".join(lines)


_INT_REQUANTIZE = {
    "double": """\
/* gemmlowp double rounding: SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT.
 * h = trunc((s * m0 + nudge) / 2**31) with C99's truncating division; M0 >= 0, so the one
 * saturating case of the high multiply (both operands INT32_MIN) cannot occur. */
static int32_t {N}_requantize(int64_t x, int32_t m0, int32_t shift)
{{
    int32_t left = shift > 0 ? shift : 0;
    int32_t right = shift > 0 ? 0 : -shift;
    int64_t s = x * ((int64_t)1 << left);
    int64_t ab = s * (int64_t)m0;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    int64_t h = (ab + nudge) / ((int64_t)1 << 31);
    int64_t mask = ((int64_t)1 << right) - 1;
    int64_t threshold = (mask >> 1) + (h < 0 ? 1 : 0);
    return (int32_t)({N}_asr(h, right) + ((h & mask) > threshold ? 1 : 0));
}}
""",
    "single": """\
/* TFLite single rounding: floor(x * M0 * 2**(shift - 31) + 1/2) from one 64-bit product. */
static int32_t {N}_requantize(int64_t x, int32_t m0, int32_t shift)
{{
    int32_t total = 31 - shift;
    return (int32_t){N}_asr(x * (int64_t)m0 + ((int64_t)1 << (total - 1)), total);
}}
""",
}

_ASR = """\
/* Arithmetic right shift of a signed value, portable: C99 leaves v >> s implementation-defined
 * for negative v, while ~v is then non-negative and ~(~v >> s) == floor(v / 2**s). */
static int64_t {N}_asr(int64_t v, int32_t s)
{{
    return v < 0 ? ~(~v >> s) : v >> s;
}}
"""

_INT_DENSE = """\
/* One layer: acc = sum_k (x[k] - zx) * Wt[j][k] in int32 (exact: |acc| <= d_in * 255 * 128),
 * then + bias, requantize, + output zero point, clamp to [lower, upper] (ReLU as a clamp). */
static void {N}_dense(const {N}_layer_t *L, const {CT} *x, {CT} *y)
{{
    int32_t j, k, p = 0;
    for (j = 0; j < L->d_out; ++j) {{
        int32_t acc = 0, c = L->per_channel ? j : 0;
        int64_t r;
        if (L->layout == {N_UPPER}_LAYOUT_DENSE) {{
            const {WT} *w = L->w + j * L->d_in;
            for (k = 0; k < L->d_in; ++k) {{
                acc += ((int32_t)x[k] - L->input_zero_point) * (int32_t)w[k];
            }}
        }} else if (L->layout == {N_UPPER}_LAYOUT_BITMASK) {{
            int32_t t = j * L->d_in;
            for (k = 0; k < L->d_in; ++k, ++t) {{
                if ((L->mask[t >> 3] >> (t & 7)) & 1) {{
                    acc += ((int32_t)x[k] - L->input_zero_point) * (int32_t)L->w[p++];
                }}
            }}
        }} else {{
            for (p = (int32_t)L->indptr[j]; p < (int32_t)L->indptr[j + 1]; ++p) {{
                acc += ((int32_t)x[L->indices[p]] - L->input_zero_point) * (int32_t)L->w[p];
            }}
        }}
        r = (int64_t){N}_requantize((int64_t)acc + (L->bias ? L->bias[j] : 0),
                                   L->multiplier[c], L->shift[c]);
        r += L->output_zero_point;
        r = r < L->lower ? L->lower : (r > L->upper ? L->upper : r);
        y[j] = ({CT})r;
    }}
}}
"""

_FIXED_SHIFT = {
    "half_away": """\
/* Qm.n requantization: x / 2**shift rounded half away from zero (C round), by shifts of the
 * magnitude. A left shift clamps x to +-2**16 first and shifts by at most 31: whatever leaves
 * the code range still does, and saturation then gives the exact result. */
static int64_t {N}_shift_round(int64_t x, int32_t shift)
{{
    int64_t half;
    if (shift <= 0) {{
        int32_t left = -shift > 31 ? 31 : -shift;
        x = x < -65536 ? -65536 : (x > 65536 ? 65536 : x);
        return x * ((int64_t)1 << left);
    }}
    if (shift > 62) {{
        shift = 62; /* |x| < 2**61 rounds to 0 from here on */
    }}
    half = (int64_t)1 << (shift - 1);
    return x < 0 ? -((-x + half) >> shift) : (x + half) >> shift;
}}
""",
    "nearest_even": """\
/* Qm.n requantization: x / 2**shift rounded half to even, by an arithmetic shift and the
 * remainder. A left shift clamps x to +-2**16 first and shifts by at most 31: whatever leaves
 * the code range still does, and saturation then gives the exact result. */
static int64_t {N}_shift_round(int64_t x, int32_t shift)
{{
    int64_t half, q, r;
    if (shift <= 0) {{
        int32_t left = -shift > 31 ? 31 : -shift;
        x = x < -65536 ? -65536 : (x > 65536 ? 65536 : x);
        return x * ((int64_t)1 << left);
    }}
    if (shift > 62) {{
        shift = 62; /* |x| < 2**61 rounds to 0 from here on */
    }}
    half = (int64_t)1 << (shift - 1);
    q = {N}_asr(x, shift);
    r = x - q * ((int64_t)1 << shift);
    return q + ((r > half || (r == half && (q & 1) != 0)) ? 1 : 0);
}}
""",
}

_FIXED_DENSE = """\
/* One layer: acc = sum_k x[k] * Wt[j][k] (exact: {ACC}), + bias (at frac_in + frac_w),
 * rounding shift to frac_out, clamp to [lower, upper] (ReLU as a clamp at 0). */
static void {N}_dense(const {N}_layer_t *L, const {CT} *x, {CT} *y)
{{
    int32_t j, k, p = 0;
    for (j = 0; j < L->d_out; ++j) {{
        {ACC} acc = 0;
        int64_t r;
        if (L->layout == {N_UPPER}_LAYOUT_DENSE) {{
            const {WT} *w = L->w + j * L->d_in;
            for (k = 0; k < L->d_in; ++k) {{
                acc += ({ACC})x[k] * ({ACC})w[k];
            }}
        }} else if (L->layout == {N_UPPER}_LAYOUT_BITMASK) {{
            int32_t t = j * L->d_in;
            for (k = 0; k < L->d_in; ++k, ++t) {{
                if ((L->mask[t >> 3] >> (t & 7)) & 1) {{
                    acc += ({ACC})x[k] * ({ACC})L->w[p++];
                }}
            }}
        }} else {{
            for (p = (int32_t)L->indptr[j]; p < (int32_t)L->indptr[j + 1]; ++p) {{
                acc += ({ACC})x[L->indices[p]] * ({ACC})L->w[p];
            }}
        }}
        r = {N}_shift_round((int64_t)acc + (L->bias ? L->bias[j] : 0), L->shift);
        r = r < L->lower ? L->lower : (r > L->upper ? L->upper : r);
        y[j] = ({CT})r;
    }}
}}
"""

_FLOAT_ACT = """\
static float {N}_activation(float z, int32_t activation, float alpha)
{{
    switch (activation) {{
    case 1: return z > 0.0f ? z : 0.0f;
    case 2: return z > 0.0f ? z : z * alpha;{TANH}{SIGMOID}
    default: return z;
    }}
}}
"""

_FLOAT_DENSE = """\
/* One layer: y[j] = act(sum_k x[k] * Wt[j][k] + b[j]), summed in float32 from k = 0. */
static void {N}_dense(const {N}_layer_t *L, const float *x, float *y)
{{
    int32_t j, k, p = 0;
    for (j = 0; j < L->d_out; ++j) {{
        float acc = 0.0f;
        if (L->layout == {N_UPPER}_LAYOUT_DENSE) {{
            const float *w = L->w + j * L->d_in;
            for (k = 0; k < L->d_in; ++k) {{
                acc += x[k] * w[k];
            }}
        }} else if (L->layout == {N_UPPER}_LAYOUT_BITMASK) {{
            int32_t t = j * L->d_in;
            for (k = 0; k < L->d_in; ++k, ++t) {{
                if ((L->mask[t >> 3] >> (t & 7)) & 1) {{
                    acc += x[k] * L->w[p++];
                }}
            }}
        }} else {{
            for (p = (int32_t)L->indptr[j]; p < (int32_t)L->indptr[j + 1]; ++p) {{
                acc += x[L->indices[p]] * L->w[p];
            }}
        }}
        if (L->bias) {{
            acc += L->bias[j];
        }}
        y[j] = {N}_activation(acc, L->activation, L->alpha);
    }}
}}
"""


def c_sources(model, name="model", rounding="double", kind=None):
    """The text of ``name.h`` and ``name.c`` (nothing is written).

    Parameters
    ----------
    model, name, rounding, kind
        As :func:`to_c`.

    Returns
    -------
    dict of str -> str
        File name to contents.

    Raises
    ------
    TypeError, ValueError
        As :func:`to_c`.
    """
    name = check_name(name)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    plan = _plan(model, kind)
    encs, idx = _layouts(plan)
    rep = c_size_report(model, kind)
    N, U = name, name.upper()
    CT, WT = plan.code_ctype, plan.weight_ctype
    integer = plan.kind == "integer"
    fixed = plan.kind == "fixed"
    if integer:
        what = (f"integer-only, {'gemmlowp double' if rounding == 'double' else 'TFLite single'}"
                " rounding")
    elif fixed:
        what = f"integer-only Q{plan.bits} fixed point, shifts rounded {plan.rounding}"
    else:
        what = "float32"
    in_t, out_t = (("x", "y") if plan.kind == "float" else ("input_codes", "output_codes"))
    bias_t = "int64_t" if fixed and plan.bits == 16 else "int32_t"

    # ---- header ----
    h = [f"/* {N}.h: generated by minscale {__version__} ({what}). Do not edit.",
         f" * {N}_predict reads {U}_INPUT_SIZE values and writes {U}_OUTPUT_SIZE; it keeps its",
         f" * intermediate activations in one static buffer of {U}_SCRATCH_SIZE elements, so it",
         " * is not reentrant (one call at a time). */",
         f"#ifndef {U}_H", f"#define {U}_H", "", "#include <stdint.h>", "",
         f"#define {U}_INPUT_SIZE {plan.input_dim}",
         f"#define {U}_OUTPUT_SIZE {plan.output_dim}",
         f"#define {U}_N_LAYERS {len(plan.layers)}",
         f"#define {U}_SCRATCH_SIZE {plan.scratch_size}",
         f"#define {U}_FLASH_BYTES {rep['flash']}  /* weights, biases, scales, tables */",
         f"#define {U}_RAM_BYTES {rep['ram']}  /* the scratch buffer */"]
    if integer:
        in_s, in_z = model.input_qparams
        out_s, out_z = model.layers[-1].output_qparams
        h += ["/* real input  = INPUT_SCALE  * (input_codes[i]  - INPUT_ZERO_POINT)",
              " * real output = OUTPUT_SCALE * (output_codes[j] - OUTPUT_ZERO_POINT) */",
              f"#define {U}_INPUT_SCALE {float(in_s)!r}",
              f"#define {U}_INPUT_ZERO_POINT {int(in_z)}",
              f"#define {U}_OUTPUT_SCALE {float(out_s)!r}",
              f"#define {U}_OUTPUT_ZERO_POINT {int(out_z)}"]
    if fixed:
        h += ["/* real input = input_codes[i] * 2**-INPUT_FRAC_BITS, real output likewise */",
              f"#define {U}_INPUT_FRAC_BITS {model.input_frac}",
              f"#define {U}_OUTPUT_FRAC_BITS {model.layers[-1].frac_out}"]
    h += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
          f"void {N}_predict(const {CT} *{in_t}, {CT} *{out_t});", "",
          "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {U}_H */", ""]

    # ---- source ----
    c = [f"/* {N}.c: generated by minscale {__version__} ({what}). Do not edit. */",
         f'#include "{N}.h"', ""]
    float_acts = ({layer.activation for layer in plan.layers} if plan.kind == "float"
                  else set())
    if float_acts & {"tanh", "sigmoid"}:
        c += ["#include <math.h>", ""]
    c += [f"#define {U}_LAYOUT_{lay.upper()} {i}" for i, lay in enumerate(LAYOUTS)]
    c += ["", f"typedef {_CTYPES[idx]} {N}_index_t;", "",
          "typedef struct {",
          f"    const {WT} *w;               /* all values (dense) or the nonzeros, Wt row-major */",
          "    const uint8_t *mask;         /* bitmask layout: keep bits of Wt, LSB first */",
          f"    const {N}_index_t *indices;  /* csr layout: input index of each nonzero */",
          f"    const {N}_index_t *indptr;   /* csr layout: d_out + 1 row pointers */"]
    if integer:
        c += ["    const int32_t *bias;         /* bias codes at s_in * s_w, or 0 */",
              "    const int32_t *multiplier;   /* M0 per channel (per_channel) or one */",
              "    const int8_t *shift;         /* TFLite exponent, same count */",
              "    int32_t d_in, d_out, layout, per_channel;",
              "    int32_t input_zero_point, output_zero_point, lower, upper;"]
    elif fixed:
        c += [f"    const {bias_t} *bias;         /* bias at frac_in + frac_w, or 0 */",
              "    int32_t d_in, d_out, layout, shift, lower, upper;"]
    else:
        c += ["    const float *bias;           /* or 0 */",
              "    int32_t d_in, d_out, layout, activation;",
              "    float alpha;"]
    c += [f"}} {N}_layer_t;", ""]

    entries = []
    for i, (layer, enc) in enumerate(zip(plan.layers, encs)):
        d_out, d_in = layer.Wt.shape
        c.append(f"/* layer {i}: {d_in} -> {d_out}, {layer.activation}, {enc.layout} layout, "
                 f"{int(np.count_nonzero(layer.Wt))} nonzero weights */")
        ptr = {}
        if enc.values.size:
            c.append(_array(f"{N}_w{i}", enc.values, WT))
            ptr["w"] = f"{N}_w{i}"
        if enc.mask is not None:
            c.append(_array(f"{N}_mask{i}", enc.mask, "uint8_t"))
            ptr["mask"] = f"{N}_mask{i}"
        if enc.indices is not None:
            if enc.indices.size:
                c.append(_array(f"{N}_indices{i}", enc.indices, f"{N}_index_t"))
                ptr["indices"] = f"{N}_indices{i}"
            c.append(_array(f"{N}_indptr{i}", enc.indptr, f"{N}_index_t"))
            ptr["indptr"] = f"{N}_indptr{i}"
        if np.any(layer.bias != 0):
            c.append(_array(f"{N}_bias{i}", layer.bias,
                            "float" if plan.kind == "float" else bias_t))
            ptr["bias"] = f"{N}_bias{i}"
        fields = [ptr.get(k, "0") for k in ("w", "mask", "indices", "indptr", "bias")]
        layout_code = f"{U}_LAYOUT_{enc.layout.upper()}"
        if integer:
            m0, sh = _per_channel(layer.multiplier), _per_channel(layer.shift)
            per_channel = int(m0.size > 1 or sh.size > 1)
            if per_channel:
                m0, sh = layer.multiplier, layer.shift
            c.append(_array(f"{N}_multiplier{i}", m0, "int32_t"))
            c.append(_array(f"{N}_shift{i}", sh, "int8_t"))
            fields += [f"{N}_multiplier{i}", f"{N}_shift{i}", str(d_in), str(d_out),
                       layout_code, str(per_channel), str(layer.input_zero_point),
                       str(layer.output_zero_point), str(layer.lower), str(layer.upper)]
        elif fixed:
            fields += [str(d_in), str(d_out), layout_code, str(layer.shift), str(layer.lower),
                       str(layer.upper)]
        else:
            fields += [str(d_in), str(d_out), layout_code, str(_ACT_CODES[layer.activation]),
                       _literal(layer.alpha, "float")]
        entries.append("    {" + ", ".join(fields) + "},")
        c.append("")
    c += [f"static const {N}_layer_t {N}_layers[{U}_N_LAYERS] = {{"] + entries + ["};", ""]
    if plan.scratch_size:
        c += [f"static {CT} {N}_scratch[{U}_SCRATCH_SIZE];", ""]

    fmt = {"N": N, "N_UPPER": U, "CT": CT, "WT": WT}
    if integer:
        c.append(_ASR.format(**fmt))
        c.append(_INT_REQUANTIZE[rounding].format(**fmt))
        c.append(_INT_DENSE.format(**fmt))
    elif fixed:
        if plan.rounding == "nearest_even":
            c.append(_ASR.format(**fmt))
        c.append(_FIXED_SHIFT[plan.rounding].format(**fmt))
        c.append(_FIXED_DENSE.format(ACC="int32_t" if plan.bits == 8 else "int64_t", **fmt))
    else:
        tanh = "\n    case 3: return tanhf(z);" if "tanh" in float_acts else ""
        sigmoid = ("\n    case 4: return z >= 0.0f ? 1.0f / (1.0f + expf(-z))"
                   " : expf(z) / (1.0f + expf(z));") if "sigmoid" in float_acts else ""
        c.append(_FLOAT_ACT.format(TANH=tanh, SIGMOID=sigmoid, **fmt))
        c.append(_FLOAT_DENSE.format(**fmt))

    c.append(f"void {N}_predict(const {CT} *{in_t}, {CT} *{out_t})")
    c.append("{")
    if len(plan.layers) == 1:
        c.append(f"    {N}_dense(&{N}_layers[0], {in_t}, {out_t});")
    else:
        half = max(layer.Wt.shape[0] for layer in plan.layers[:-1])
        c += [f"    const {CT} *in = {in_t};",
              f"    {CT} *out;",
              "    int32_t i;",
              f"    for (i = 0; i < {U}_N_LAYERS; ++i) {{",
              "        /* hidden layers alternate between the two halves of the scratch buffer */",
              f"        out = i == {U}_N_LAYERS - 1 ? {out_t} : {N}_scratch + (i % 2) * {half};",
              f"        {N}_dense(&{N}_layers[i], in, out);",
              "        in = out;",
              "    }"]
    c += ["}", ""]
    return {f"{N}.h": "\n".join(h), f"{N}.c": "\n".join(c)}


def write_files(directory, files):
    """Write ``{file name: text}`` into `directory`, all or nothing.

    Each file is written by :func:`minscale.io.atomic_write` (a temporary file beside it,
    fsynced, renamed into place; a new file gets mode 0o644, a replaced one keeps its mode;
    temporaries left by killed writers are removed), so a reader never sees half a file. If
    a later file fails, the files already written are put back as they were (restored or
    removed), and a folder this call created is removed again.

    Parameters
    ----------
    directory : str or path
        An existing folder, or a new one whose parent folder exists: only the last folder of
        the path is created (as ``mkdir``; ``build/c/`` with ``build`` missing is refused,
        like every other minscale output whose folder must exist).
    files : dict of str -> str
        File names (no folders) and their text, written as UTF-8 with ``\\n`` line ends.

    Returns
    -------
    list of str
        The paths written, in the order of `files`.

    Raises
    ------
    ValueError
        If directory exists and is not a directory.
    FileNotFoundError
        If the parent folder of a missing `directory` does not exist.
    PermissionError, OSError
        The folder cannot be created or written; nothing is changed then.
    """
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} exists and is not a directory")
    created = False
    if not os.path.isdir(directory):
        parent = os.path.dirname(os.path.abspath(directory))
        if not os.path.isdir(parent):
            raise FileNotFoundError(errno.ENOENT, f"cannot create the folder {directory!r}: "
                                    f"its parent folder {parent!r} does not exist (only the "
                                    "last folder of the path is created)")
        try:
            os.mkdir(directory)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the folder {directory!r} "
                          f"({exc.strerror or exc})") from exc
        created = True
    done = []  # (path, previous bytes or None)
    try:
        for fname, text in files.items():
            path = os.path.join(directory, fname)
            previous = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    previous = f.read()
            data = text.encode("utf-8")
            atomic_write(path, lambda f, data=data: f.write(data))
            done.append((path, previous))
        return [path for path, _ in done]
    except BaseException:
        for path, previous in reversed(done):
            try:
                if previous is None:
                    os.remove(path)
                else:
                    atomic_write(path, lambda f, data=previous: f.write(data))
            except OSError:
                pass
        if created:
            try:
                os.rmdir(directory)
            except OSError:
                pass
        raise


def to_c(model, directory, name="model", rounding="double", kind=None):
    """Write a C99 header and source file computing `model`.

    Parameters
    ----------
    model : QuantizedModel or Sequential
        Integer-only QuantizedModel (int8/uint8 activations, weights of <= 8 bits, identity or
        relu layers), or a float Sequential (identity, relu, leaky_relu, tanh, sigmoid).
    directory : str or path
        An existing folder, or a new one whose parent exists (only the last folder is
        created); must not be an existing file.
    name : str, default "model"
        C identifier prefixing every symbol; files ``name.h`` and ``name.c``.
    rounding : {"double", "single"}, default "double"
        Integer models: gemmlowp double rounding or TFLite single rounding (see
        :func:`minscale.quant.multiply_by_quantized_multiplier`). Ignored for float models.
    kind : {"integer", "float"} or None, default None
        None: integer for a QuantizedModel, float for a Sequential; "integer" on a float model
        raises.

    Returns
    -------
    list of str
        ``[directory/name.h, directory/name.c]``.

    Raises
    ------
    TypeError
        If model is neither kind, or name not a str.
    ValueError
        If name is not a C identifier, rounding or kind unknown, directory is a file, or the
        model cannot be exported (weights-only quantization or a float model asked for an
        integer export, an unsupported activation); nothing is written then.
    FileNotFoundError, PermissionError, OSError
        The parent of a missing directory does not exist, or the folder cannot be written
        (see :func:`write_files`); nothing is changed then.

    Notes
    -----
    Generated code: ``void name_predict(const int8_t *input_codes, int8_t *output_codes)``
    (``uint8_t`` for uint8 activations) for integer models, equal bit for bit to row i of
    ``model.predict_codes(X, requantize_rounding=rounding)`` when given row i of
    ``model.quantize_input(X)``; ``void name_predict(const float *x, float *y)`` for float
    models, within float32 summation-order rounding of ``model.predict`` in float32.
    Pruned layers are stored as bitmask or CSR when smaller (:mod:`minscale.export.layout`).

    Examples
    --------
    >>> import minscale as ms, numpy as np, tempfile
    >>> m = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    >>> X = np.random.default_rng(0).normal(size=(20, 2))
    >>> q = ms.quant.quantize_model(m, calibration_data=X)
    >>> [p.rsplit("/", 1)[1] for p in to_c(q, tempfile.mkdtemp(), name="tiny")]
    ['tiny.h', 'tiny.c']
    """
    files = c_sources(model, name=name, rounding=rounding, kind=kind)
    return write_files(directory, files)
