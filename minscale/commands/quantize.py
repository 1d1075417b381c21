"""``minscale quantize``: quantize a saved model (fixed point or affine, PTQ or QAT) and report.

Examples::

    minscale quantize model.npz --bits 8 --affine --per-channel --calibrate --data digits \\
        --out q.npz
    minscale quantize model.npz --bits 8 --auto-frac --data diabetes
    minscale quantize model.npz --bits 4 --affine --per-channel --calibrate --qat-epochs 20 \\
        --data digits --out q4.npz

Weights: ``--frac-bits F`` is fixed point ``QFormat(bits, F)``; ``--auto-frac`` (the default)
picks, per layer, the finest fixed-point format that does not saturate; ``--affine`` is
symmetric affine (per tensor, or per output unit with ``--per-channel``). ``--calibrate``
also quantizes the input and every layer's output to int8 with ranges measured on the training
split; it enables the integer-only path (bits <= 8, identity/relu layers). ``--qat-epochs N``
fine-tunes with fake quantization for N epochs and reports the converted model as well.

Options that would be ignored are refused: ``--lr`` / ``--batch-size`` need ``--qat-epochs``,
``--calibration-rows`` / ``--requantize-rounding`` need ``--calibrate``. ``--frac-bits F``
must lie in [-bits, 2 * bits]: the format's largest magnitude ``2**(bits - 1 - F)`` then
ranges from ``2**(2 * bits - 1)`` down to ``2**-(bits + 1)``, which covers any weight a
trained model has; beyond that every weight saturates or rounds to zero.
"""

from __future__ import annotations

import sys

from ..io import load, save
from ..model import Sequential
from ..quant import QATConfig, WeightSpec, convert, quantize_model, strip_qat
from ..train import check_updates
from ._common import (
    add_recorded_data_arguments,
    add_regularization_arguments,
    check_at_least,
    check_input_path,
    check_output_path,
    check_positive,
    check_regularization_options,
    divergence_reported,
    finetune_optimizer,
    integer,
    load_task,
    set_l2,
)
from .evaluate import data_options, evaluate_model

#: QAT defaults and the integer path's default rounding, when the option is not given
LEARNING_RATE, BATCH_SIZE, ROUNDING = 1e-3, 32, "double"

NAME = "quantize"
HELP = (
    "quantize a saved model (fixed point or int8 affine, post-training or QAT) and report the cost"
)


def add_arguments(parser):
    """Register the quantize command's options on `parser`."""
    parser.add_argument(
        "model", help="saved float model (.npz, as written by minscale train --save)"
    )
    parser.add_argument(
        "--bits", type=integer, default=8, help="bits per weight code, 2..32 (default: 8)"
    )
    scheme = parser.add_mutually_exclusive_group()
    scheme.add_argument(
        "--frac-bits",
        type=integer,
        default=None,
        metavar="F",
        help="fixed point with F fractional bits (Q(bits-1-F).F), -bits <= F <= 2*bits",
    )
    scheme.add_argument(
        "--auto-frac",
        action="store_true",
        help="fixed point, per layer the largest frac bits that do not saturate " "(default)",
    )
    scheme.add_argument(
        "--affine",
        action="store_true",
        help="symmetric affine weights, narrow range [-(2^(bits-1)-1), 2^(bits-1)-1]",
    )
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="with --affine: one scale per output unit instead of per layer",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also quantize activations to int8, calibrated on the training split",
    )
    parser.add_argument(
        "--calibration-rows",
        type=integer,
        default=None,
        help="with --calibrate: use only the first N training rows for calibration "
        "(default: all)",
    )
    parser.add_argument(
        "--qat-epochs",
        type=integer,
        default=0,
        help="quantization-aware fine-tuning epochs (default: 0, none)",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="QAT learning rate of Adam (default: 0.001)"
    )
    parser.add_argument(
        "--batch-size", type=integer, default=None, help="QAT batch size (default: 32)"
    )
    add_regularization_arguments(parser, " (QAT; needs --qat-epochs)")
    parser.add_argument(
        "--requantize-rounding",
        default=None,
        choices=("double", "single"),
        help="with --calibrate, the integer path: gemmlowp double rounding (default) or "
        "TFLite single rounding",
    )
    add_recorded_data_arguments(parser, "the split and of QAT shuffling")
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="where to save the quantized model (.npz); not saved without it",
    )


def weight_spec_from_args(args):
    """The :class:`minscale.quant.WeightSpec` the options ask for.

    Raises
    ------
    ValueError
        --bits outside 2..32, --per-channel without --affine, --frac-bits outside
        [-bits, 2 * bits].
    """
    if not 2 <= args.bits <= 32:
        raise ValueError(f"--bits must be in 2..32, got {args.bits}")
    if args.per_channel and not args.affine:
        raise ValueError("--per-channel applies to --affine weights only")
    if args.affine:
        return WeightSpec(args.bits, "affine", per_channel=args.per_channel)
    if args.frac_bits is not None:
        low, high = -args.bits, 2 * args.bits
        if not low <= args.frac_bits <= high:
            raise ValueError(
                f"--frac-bits must be in [{low}, {high}] (-bits .. 2*bits) for --bits "
                f"{args.bits}, got {args.frac_bits}: the largest magnitude 2**(bits-1-F) "
                "would be far from any weight"
            )
        try:
            return WeightSpec(args.bits, "fixed", frac_bits=args.frac_bits)
        except ValueError as exc:
            raise ValueError(f"--frac-bits: {exc}") from None
    return WeightSpec(args.bits, "fixed")


def _line(result):
    text = f"test loss {result['loss']:.6g}"
    if "accuracy" in result:
        text += f", test accuracy {result['accuracy']:.4f}"
    return text


def _report(label, qmodel, X, y, args):
    result = qmodel.evaluate(X, y)
    text = f"{label:<22}{_line(result)} (simulated)"
    if qmodel.integer_supported:
        rounding = ROUNDING if args.requantize_rounding is None else args.requantize_rounding
        integer = qmodel.evaluate(X, y, integer=True, requantize_rounding=rounding)
        text += f"; integer-only: {_line(integer)}"
    print(text)


def check_options(args):
    """Reject bad or silently ignored options before any file is read; return the spec.

    Returns
    -------
    minscale.quant.WeightSpec

    Raises
    ------
    ValueError
        As :func:`weight_spec_from_args`; --qat-epochs < 0; --lr (not finite and > 0) or
        --batch-size (< 1) given, or given without --qat-epochs; --calibration-rows < 1, or
        it or --requantize-rounding without --calibrate; an --out that cannot be written.
    """
    spec = weight_spec_from_args(args)
    if args.qat_epochs < 0:
        raise ValueError(f"--qat-epochs must be >= 0, got {args.qat_epochs}")
    for flag, value in (("--lr", args.lr), ("--batch-size", args.batch_size),
                        ("--l2", args.l2), ("--weight-decay", args.weight_decay),
                        ("--decoupled", args.decoupled or None)):
        if value is not None and not args.qat_epochs:
            raise ValueError(
                f"{flag} applies to quantization-aware training only; give --qat-epochs N "
                "(N >= 1) or drop it"
            )
    check_regularization_options(args)
    if args.lr is not None:
        check_positive(args.lr, "--lr")
    if args.batch_size is not None:
        check_at_least(args.batch_size, "--batch-size", 1)
    for flag, value in (
        ("--calibration-rows", args.calibration_rows),
        ("--requantize-rounding", args.requantize_rounding),
    ):
        if value is not None and not args.calibrate:
            raise ValueError(f"{flag} applies to calibrated activations only; add --calibrate")
    if args.calibration_rows is not None and args.calibration_rows < 1:
        raise ValueError(f"--calibration-rows must be >= 1, got {args.calibration_rows}")
    if args.out is not None:
        check_output_path(args.out, "--out")
    return spec


def run(args):
    """Load, quantize (and QAT-fine-tune), print the report, save; return the exit code."""

    spec = check_options(args)  # argument mistakes before any file is read
    model = load(check_input_path(args.model, "model"))
    if not isinstance(model, Sequential):
        raise ValueError(
            f"{args.model!r} holds a {type(model).__name__}; quantize needs a float "
            "Sequential model (as written by minscale train --save)"
        )
    options, differs = data_options(args, model.state.get("data"), args.model)
    task = load_task(options, model.dtype.name)
    X_tr, X_te, y_te = task["X_train"], task["X_test"], task["y_test"]
    if X_tr.shape[1] != model.input_dim:
        raise ValueError(
            f"the model expects {model.input_dim} features but {options.data!r} has "
            f"{X_tr.shape[1]}"
        )
    if args.qat_epochs:
        check_updates(args.qat_epochs, X_tr.shape[0],
                      BATCH_SIZE if args.batch_size is None else args.batch_size,
                      "--qat-epochs", "--batch-size")
    for text in differs:
        print(
            f"minscale: note: {text}; the split and standardization differ from training",
            file=sys.stderr,
        )
    classification = task["info"]["task"] == "classification"
    activations = "int8" if args.calibrate else None
    calibration = X_tr if args.calibration_rows is None else X_tr[: args.calibration_rows]
    unit = "" if task["y_scale"] == 1.0 else " (losses: mse of the standardized target)"
    print(
        f"model {args.model}: {model.count_params()} parameters; data {task['info']['name']}: "
        f"{X_tr.shape[0]} train / {X_te.shape[0]} test rows{unit}"
    )
    print(
        f"weights {spec.name} ({spec.scheme}"
        + (", per channel" if spec.scheme == "affine" and spec.per_channel else "")
        + f"), activations {activations or 'float'}"
        + (f" (calibrated on {calibration.shape[0]} training rows)" if activations else "")
    )
    print(f"{'float:':<22}{_line(evaluate_model(model, X_te, y_te, classification))}")

    qmodel = quantize_model(
        model, spec, activations, calibration_data=calibration if activations else None
    )
    _report("post-training:", qmodel, X_te, y_te, args)
    if args.qat_epochs:
        qat = model.copy()
        set_l2(qat, args.l2)
        qat.compile(
            # the saved weight decay and regularizers carry over unless the options replace them
            optimizer=finetune_optimizer(model.optimizer,
                                         LEARNING_RATE if args.lr is None else args.lr,
                                         args.weight_decay, args.decoupled),
            metrics=["accuracy"] if classification else None,
        )
        with divergence_reported():
            qat.fit(
                X_tr,
                task["y_train"],
                epochs=args.qat_epochs,
                batch_size=BATCH_SIZE if args.batch_size is None else args.batch_size,
                seed=options.seed,
                quantization=QATConfig(spec, activations),
            )
        qmodel = convert(qat, calibration_data=calibration if activations else None)
        strip_qat(qat)
        _report(f"QAT ({args.qat_epochs} epochs):", qmodel, X_te, y_te, args)
    size = qmodel.size_report()
    print(
        f"bytes: float32 {size['float32_nbytes']}, quantized {size['nbytes']} "
        f"(ratio {size['ratio']:.2f}), packed {size['nbytes_packed']} "
        f"(ratio {size['ratio_packed']:.2f})"
    )
    if args.out:
        save(qmodel, args.out)
        print(f"saved {args.out}")
    return 0
