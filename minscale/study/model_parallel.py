"""The model-parallel part: data, pipeline and tensor parallelism at 2 processes, one model.

:func:`model_parallel_part` trains the study's model (its hidden widths, ReLU, linear
outputs, Adam) on the study's training split with the same global batch, seed and number of
updates in five ways: one process (the reference), data parallel (``workers=2``), pipeline
GPipe and 1F1B (``pipeline_stages=2``, ``micro_batches=m``) and tensor parallel
(``tensor_parallel=2``), and reports per form the step time measured inside the training,
the memory each process holds (computed exactly from the model, the batch and the schedule,
with the measured peak resident set beside it), the speed-up over one process and the final
test loss, whose agreement with the one-process run checks that every form trains the same
model (issue 17: data parallel up to the rounding of the shard sum, pipeline bit for bit
against micro-batch accumulation, tensor parallel up to the rounding of the split sums).
:func:`run_model_parallel` is its entry for :func:`minscale.study.runs.register_part`
(``minscale study --part model_parallel``).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import kernels
from .._checks import check_int, check_real
from ..optim import Adam
from ..parallel import run_workers, shard_bounds
from ..parallel.p2p import SharedMemoryLinks, SharedMemoryMailboxes
from ..parallel.schedule import pipeline_schedule
from ..parallel.tensor import check_tensor_parallel, shard_model
from ..train.pipeline import run_stage, stage_bounds
from .runs import build_model, measure, register_part

__all__ = ["MODEL_PARALLEL_FORMS", "StepStamps", "model_parallel_memory",
           "model_parallel_part", "model_parallel_text", "run_model_parallel"]

#: the forms compared, in the order they run and print: (key, label)
MODEL_PARALLEL_FORMS = (
    ("single", "1 process"),
    ("data", "data parallel"),
    ("gpipe", "pipeline GPipe"),
    ("1f1b", "pipeline 1F1B"),
    ("tensor", "tensor parallel"),
)

#: step gaps dropped at the start of every run (first BLAS calls, page faults)
WARMUP = 2

#: processes of every parallel form
PROCESSES = 2


def _peak_rss():
    """This process's peak resident set (``VmHWM`` of /proc/self/status) in bytes, or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class StepStamps:
    """Training callback: ``time.perf_counter()`` at every step's start, written to a file.

    Module level so that worker processes can unpickle it; every process writes its own file
    (``<pid>-<ns>.json`` in `directory`: the stamps and the peak resident set) at the end, as
    tensor-parallel ranks train a shard whose ``model.state`` does not come back.
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
        path.write_text(json.dumps({"stamps": self.stamps, "peak_rss": _peak_rss()}))


def _read_stamps(directory):
    """Per process (ordered by file name): the step gaps after warm-up and the peak RSS; the
    files are removed."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        record = json.loads(path.read_text())
        path.unlink()
        out.append((np.diff(record["stamps"])[WARMUP:], record["peak_rss"]))
    return out


def _single_body(comm, job):
    """One process: the reference training, in a fresh process as the parallel forms are."""
    kernels.set_backend(job["backend"])
    model = job["model"].relink()
    model.fit(job["X"], job["y"], epochs=job["epochs"], batch_size=job["batch_size"],
              seed=job["seed"], verbose=0, callbacks=[StepStamps(job["directory"])])
    return model.params.copy()


def _pipeline_body(comm, job):
    """One pipeline stage: :func:`minscale.train.pipeline.run_stage` with its statistics
    (``fit`` takes no callbacks with ``pipeline_stages > 1``)."""
    kernels.set_backend(job["backend"])
    links = SharedMemoryLinks(job["mailboxes"], comm, job["parent_pid"])
    model = job["model"].relink()
    stats = {}
    try:
        run_stage(model, job["X"], job["y"], comm=comm, links=links, bounds=job["bounds"],
                  micro_batches=job["micro_batches"], schedule=job["schedule"],
                  epochs=job["epochs"], batch_size=job["batch_size"], shuffle=True,
                  seed=job["seed"], verbose=0, pruning=None, pruning_method="magnitude",
                  stats=stats)
    finally:
        links.close()
    return {"gaps": stats["step_seconds"][WARMUP:], "peak_rss": _peak_rss(),
            "peak_stash_bytes": int(stats.get("peak_stash_bytes", 0)),
            "params": model.params.copy() if comm.rank == 0 else None}


def _stash_rows(stages, micro_batches, kind, rows):
    """Per stage, the most rows of micro-batches held saved at once under the schedule."""
    sizes = [hi - lo for lo, hi in (shard_bounds(rows, i, micro_batches)
                                    for i in range(micro_batches))]
    peaks = []
    for actions in pipeline_schedule(stages, micro_batches, kind):
        held = peak = 0
        for action, i in actions:
            held += sizes[i] if action == "forward" else -sizes[i]
            peak = max(peak, held)
        peaks.append(peak)
    return peaks


def model_parallel_memory(model, batch_size, micro_batches, state_buffers):
    """Bytes each process holds in every form, computed from the model, batch and schedule.

    Parameters
    ----------
    model : Sequential, built
        The whole model (its dtype gives the bytes per value).
    batch_size : int, >= 1
        The global batch in rows (the largest batch of the run).
    micro_batches : int, >= 1
        Micro-batches per batch of the pipeline forms.
    state_buffers : int, >= 0
        Optimizer buffers of one value per parameter (Adam: 2, its moments; SGD: 0).

    Returns
    -------
    dict
        Per form key of :data:`MODEL_PARALLEL_FORMS`, a list with one dict per process:
        ``params_held`` (bytes of the parameter vector the process keeps; its gradient
        buffer is as large), ``params_owned`` (bytes of the parameters it updates),
        ``optimizer`` (``state_buffers`` x owned values) and ``activations`` (the peak bytes
        of activations the layers keep for their backward pass).

    Notes
    -----
    Activations: a Dense layer keeps its input and its output for the backward pass
    (``_x`` and ``_a``; a layer's output is the next layer's input, counted once), so layers
    ``a .. b-1`` keep ``rows x (d_a + d_{a+1} + ... + d_b)`` values per micro-batch in flight.
    One process: the whole batch through every layer. Data parallel: each process its shard
    of the batch (the larger one: ``shard_bounds``). Pipeline: each stage holds the whole
    parameter vector (the implementation gathers the model there at the end, see
    :mod:`minscale.train.pipeline`) but updates, and keeps optimizer state for, its own
    slice; its activations are its layers' per row times the most rows the schedule keeps in
    flight (GPipe: every micro-batch of the batch; 1F1B: at most ``p - s`` micro-batches on
    stage s; Huang et al. 2019, Narayanan et al. 2019). Tensor parallel: each rank's
    :class:`minscale.parallel.tensor.TensorShard` (column-split layers keep their share of the
    units, a row-split layer its rows of W and the whole bias, owned by rank 0; Shoeybi et al.
    2019), the whole batch, its share of a column layer's output.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    micro_batches = check_int("micro_batches", micro_batches, 1)
    state_buffers = check_int("state_buffers", state_buffers, 0)
    item = model.dtype.itemsize
    widths = [model.input_dim] + [layer.units for layer in model.layers]
    P = model.params.size

    def record(held, owned, act_values):
        return {"params_held": held * item, "params_owned": owned * item,
                "optimizer": state_buffers * owned * item, "activations": act_values * item}

    out = {"single": [record(P, P, batch_size * sum(widths))]}
    out["data"] = [record(P, P, (hi - lo) * sum(widths))
                   for lo, hi in (shard_bounds(batch_size, r, PROCESSES)
                                  for r in range(PROCESSES))]
    bounds = stage_bounds(model, PROCESSES)
    slices = model.layer_slices()
    for kind in ("gpipe", "1f1b"):
        rows = _stash_rows(PROCESSES, micro_batches, kind, batch_size)
        out[kind] = [record(P, slices[b - 1][1] - slices[a][0], r * sum(widths[a:b + 1]))
                     for (a, b), r in zip(bounds, rows)]
    out["tensor"] = []
    for rank in range(PROCESSES):
        shard = shard_model(model, SimpleNamespace(rank=rank, size=PROCESSES))
        per_row = model.input_dim + sum(layer.units for layer in shard.layers)
        out["tensor"].append(record(shard.params.size, int(shard.owned.sum()),
                                    batch_size * per_row))
    return out


def _make_model(arrays, hidden, seed, learning_rate):
    model = build_model(arrays["X"].shape[1], arrays["y"].shape[1], list(hidden), "relu", seed,
                        arrays["X"].dtype.name)
    return model.compile(optimizer=Adam(learning_rate))


def model_parallel_part(task, hidden=(32,), batch_size=32, epochs=3, micro_batches=4,
                        learning_rate=1e-3, seed=0, rounds=3):
    """Step time and memory per process of data, pipeline and tensor parallelism at 2
    processes, against one process, on the same model, data, seed and global batch.

    Parameters
    ----------
    task : dict
        ``X_train``, ``y_train`` (2-D, float64 or float32), ``X_test``, ``y_test`` and
        ``info`` (as :func:`minscale.commands._common.load_task` returns; classification
        tasks also ``labels_test``).
    hidden : sequence of int, each >= 2, default (32,)
        The model's hidden widths (ReLU; linear output layer). Tensor parallelism splits each
        pair of layers' units over the 2 ranks, so every split width must be at least 2.
    batch_size : int, >= 1, default 32
        The global batch of every form.
    epochs : int, >= 1, default 3
    micro_batches : int, >= 1, default 4
        Micro-batches per batch of the two pipeline forms.
    learning_rate : float > 0, default 1e-3
        Adam's constant rate.
    seed : int, >= 0, default 0
        Initial weights and shuffling, the same for every form.
    rounds : int, >= 1, default 3
        Runs of every form, interleaved (A B C D E, A B C D E, ...); step times are medians
        over rounds with min and max.

    Returns
    -------
    dict
        JSON-ready: ``model``, ``hidden``, ``n_params``, ``dtype``, ``global_batch``,
        ``micro_batches``, ``epochs``, ``updates``, ``learning_rate``, ``seed``, ``rounds``,
        ``processes``, ``cpu_count``, ``load_average``, ``forms`` (one dict per form of
        :data:`MODEL_PARALLEL_FORMS`: ``key``, ``name``, ``processes``, ``step_seconds``
        (median over rounds of the slowest process's median step), ``step_seconds_min``,
        ``step_seconds_max``, ``speedup`` (one process's step time over this one's),
        ``test_loss``, ``test_accuracy``, ``loss_rel_difference`` (to the one-process run),
        ``max_param_difference``, ``memory`` (per process: :func:`model_parallel_memory` and
        ``total``), ``peak_rss_bytes`` (measured, per process), pipeline forms also
        ``stash_bytes_measured`` (per stage)), ``max_loss_rel_difference``, ``timing``,
        ``memory_note``, ``note`` and ``text`` (:func:`model_parallel_text`).

    Raises
    ------
    ValueError
        A missing task key, a hidden width below 2 or no hidden layer (the pipeline needs 2
        layers), too few updates to time (at most ``WARMUP + 1``), or a bad number.

    Notes
    -----
    Step time is measured inside the training, so process start-up (spawn, imports, data
    sharing) stays out: one process, data and tensor parallel stamp ``time.perf_counter()``
    at every step's start in every process (:class:`StepStamps`), a step being the gap to the
    next stamp; the pipeline stages time every update (their messages and the loss
    allreduce included; :func:`minscale.train.pipeline.run_stage`, as ``fit`` runs it). The
    first :data:`WARMUP` steps of every run are dropped; a run's step time is the median of
    its slowest process. Every form runs in fresh worker processes with one BLAS thread each
    (the one-process reference too, so that its peak resident set compares).
    """
    for key in ("X_train", "y_train", "X_test", "y_test", "info"):
        if key not in task:
            raise ValueError(f"task must have the key {key!r} (see load_task)")
    hidden = tuple(check_int("hidden[i]", h, 1) for h in hidden)
    if any(h < PROCESSES for h in hidden):
        raise ValueError(f"hidden widths must be >= {PROCESSES} for tensor_parallel="
                         f"{PROCESSES} (a split layer's units are shared out over the ranks), "
                         f"got {','.join(map(str, hidden))}")
    if not hidden:
        raise ValueError("hidden must hold at least one width: pipeline_stages=2 needs 2 "
                         "layers")
    batch_size = check_int("batch_size", batch_size, 1)
    epochs = check_int("epochs", epochs, 1)
    micro_batches = check_int("micro_batches", micro_batches, 1)
    learning_rate = check_real("learning_rate", learning_rate, 0.0, None, lo_open=True)
    seed = check_int("seed", seed, 0)
    rounds = check_int("rounds", rounds, 1)
    X = np.ascontiguousarray(task["X_train"])
    y = np.ascontiguousarray(task["y_train"], dtype=X.dtype)
    n = X.shape[0]
    updates = epochs * -(-n // batch_size)
    if updates <= WARMUP + 1:
        raise ValueError(f"the runs make {updates} updates (epochs x batches); timing needs "
                         f"more than {WARMUP + 1}: more epochs or a smaller batch_size")
    arrays = {"X": X, "y": y}
    probe = _make_model(arrays, hidden, seed, learning_rate)
    check_tensor_parallel(probe, PROCESSES)
    bounds = stage_bounds(probe, PROCESSES)
    backend = kernels.get_backend()
    item = X.dtype.itemsize
    widths = [probe.input_dim] + [layer.units for layer in probe.layers]
    rows = -(-min(batch_size, n) // micro_batches)
    slices = probe.layer_slices()
    largest = max(slices[b - 1][1] - slices[a][0] for a, b in bounds)
    stage_nbytes = max(largest, 2 * len(probe.layers) + 1) * 8
    directory = tempfile.mkdtemp(prefix="minscale_mp_")
    common = dict(X=X, y=y, epochs=epochs, batch_size=batch_size, seed=seed, backend=backend,
                  directory=directory)

    def single():
        params = run_workers(_single_body, 1, args=({**common, "model": probe},), nbytes=8)[0]
        (gaps, rss), = _read_stamps(directory)
        return [float(np.median(gaps))], [rss], params, None

    def fit_form(**kwargs):
        model = _make_model(arrays, hidden, seed, learning_rate)
        model.fit(X, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=0,
                  callbacks=[StepStamps(directory)], **kwargs)
        per = _read_stamps(directory)
        return ([float(np.median(g)) for g, _ in per], [r for _, r in per], model.params.copy(),
                model)

    def pipeline(kind):
        with SharedMemoryMailboxes([rows * widths[b] * item for _, b in bounds[:-1]],
                                   micro_batches) as boxes:
            job = {**common, "model": probe, "bounds": bounds, "micro_batches": micro_batches,
                   "schedule": kind, "mailboxes": boxes.specs, "parent_pid": os.getpid()}
            per = run_workers(_pipeline_body, PROCESSES, args=(job,), nbytes=stage_nbytes)
        return ([float(np.median(r["gaps"])) for r in per], [r["peak_rss"] for r in per],
                per[0]["params"], [r["peak_stash_bytes"] for r in per])

    runners = {"single": single,
               "data": lambda: fit_form(workers=PROCESSES),
               "gpipe": lambda: pipeline("gpipe"),
               "1f1b": lambda: pipeline("1f1b"),
               "tensor": lambda: fit_form(tensor_parallel=PROCESSES)}
    times = {key: [] for key, _ in MODEL_PARALLEL_FORMS}
    last = {}
    t0 = time.perf_counter()
    try:
        for _ in range(rounds):
            for key, _label in MODEL_PARALLEL_FORMS:
                steps, rss, params, extra = runners[key]()
                times[key].append(max(steps))
                last[key] = (rss, params, extra)
    finally:
        for path in Path(directory).glob("*.json"):
            path.unlink()
        os.rmdir(directory)
    seconds = time.perf_counter() - t0

    # optimizer buffers of one value per parameter, from a model trained by fit (Adam: 2)
    trained = last["data"][2]
    state_buffers = sum(1 for buf in trained.optimizer.state_arrays().values()
                        if getattr(buf, "shape", None) == trained.params.shape)
    memory = model_parallel_memory(probe, min(batch_size, n), micro_batches, state_buffers)
    reference = None
    forms = []
    for key, label in MODEL_PARALLEL_FORMS:
        rss, params, extra = last[key]
        model = _make_model(arrays, hidden, seed, learning_rate)
        model.params[...] = params
        m = measure(model.predict, task)
        if reference is None:
            reference = (m["loss"], params)
        t = times[key]
        per_process = [dict(rec, total=rec["params_held"] * 2 + rec["optimizer"]
                            + rec["activations"]) for rec in memory[key]]
        form = {"key": key, "name": label, "processes": len(per_process),
                "step_seconds": statistics.median(t), "step_seconds_min": min(t),
                "step_seconds_max": max(t),
                "speedup": statistics.median(times["single"]) / statistics.median(t),
                "test_loss": m["loss"], "test_accuracy": m["accuracy"],
                "loss_rel_difference": abs(m["loss"] - reference[0]) / abs(reference[0]),
                "max_param_difference": float(np.abs(params - reference[1]).max()),
                "memory": per_process, "peak_rss_bytes": rss}
        if key in ("gpipe", "1f1b"):
            form["stash_bytes_measured"] = extra
        forms.append(form)
    result = {
        "model": "-".join(str(w) for w in widths) + " relu, linear output",
        "hidden": list(hidden), "n_params": int(probe.params.size), "dtype": X.dtype.name,
        "data": task["info"].get("name"), "n_train": int(n),
        "global_batch": batch_size, "micro_batches": micro_batches, "epochs": epochs,
        "updates": updates, "learning_rate": learning_rate, "optimizer": "Adam",
        "seed": seed, "rounds": rounds, "processes": PROCESSES,
        "stage_layers": [[a, b - 1] for a, b in bounds],
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0],
        "forms": forms,
        "max_loss_rel_difference": max(f["loss_rel_difference"] for f in forms),
        "seconds": seconds,
        "timing": f"median step inside training of the slowest process, first {WARMUP} steps "
                  f"dropped, median over {rounds} interleaved round(s); start-up excluded; "
                  "seed "
                  f"{seed} only",
        "memory_note": "computed bytes per process (model_parallel_memory): parameters held "
                       "(the gradient buffer is as large, counted in total), optimizer "
                       "state of the parameters it updates, peak stashed activations; "
                       "peak_rss_bytes is the measured VmHWM, interpreter and libraries "
                       "included (in process-id order for data and tensor parallel, whose "
                       "callbacks do not know their rank)",
        "note": f"{PROCESSES} processes on {os.cpu_count()} shared cores, 1 BLAS thread "
                "each: timings are indicative on a loaded machine",
    }
    result["text"] = model_parallel_text(result)
    return result


def _kib(nbytes):
    return f"{nbytes / 1024:.1f}"


def model_parallel_text(result):
    """The part's lines of the text report: one row per form and process.

    Parameters
    ----------
    result : dict
        As :func:`model_parallel_part` returns.

    Returns
    -------
    list of str
    """
    r = result
    lines = [f"Model parallel: {r['model']} ({r['n_params']:,} parameters, {r['dtype']}), "
             f"{r['data']}, global batch {r['global_batch']}, {r['updates']} updates, "
             f"{r['processes']} processes, pipeline micro-batches {r['micro_batches']}",
             f"  step time: {r['timing']}; memory in KiB per process (computed), peak RSS "
             "measured in MiB",
             f"  {'form':<16} {'proc':>4} {'ms/step':>8} {'min..max':>13} {'speedup':>7} "
             f"{'params':>7} {'owned':>7} {'optim':>7} {'activ':>7} {'RSS':>6} "
             f"{'test loss':>10} {'rel diff':>8}"]
    for f in r["forms"]:
        for p, mem in enumerate(f["memory"]):
            rss = f["peak_rss_bytes"][p] if p < len(f["peak_rss_bytes"]) else None
            rss_text = "n/a" if rss is None else f"{rss / 2**20:.0f}"
            if p == 0:
                head = (f"  {f['name']:<16} {p:>4} {f['step_seconds'] * 1e3:>8.3f} "
                        f"{f['step_seconds_min'] * 1e3:>6.2f}..{f['step_seconds_max'] * 1e3:<5.2f}"
                        f" {f['speedup']:>7.2f} ")
                tail = f" {f['test_loss']:>10.6f} {f['loss_rel_difference']:>8.1e}"
            else:
                head, tail = f"  {'':<16} {p:>4} {'':>8} {'':>13} {'':>7} ", ""
            lines.append(f"{head}{_kib(mem['params_held']):>7} {_kib(mem['params_owned']):>7} "
                         f"{_kib(mem['optimizer']):>7} {_kib(mem['activations']):>7} "
                         f"{rss_text:>6}{tail}")
    lines.append(f"  largest relative test-loss difference to 1 process: "
                 f"{r['max_loss_rel_difference']:.1e} (every form trains the same model)")
    lines.append(f"  {r['note']}")
    return lines


def run_model_parallel(task, config, context):
    """``minscale study --part model_parallel``: :func:`model_parallel_part` on the study's
    task and model.

    Parameters
    ----------
    task : dict
    config : StudyConfig
        ``hidden``, ``batch_size``, ``worker_epochs`` (epochs of every run) and
        ``timing_repeats`` (rounds) are used.
    context : dict
        ``seeds`` (the first one seeds every run, as in the workers part) and ``baseline``:
        its ``initial_learning_rate`` (constant) when the study ran the learning-rate part,
        else 1e-3.

    Returns
    -------
    dict
        As :func:`model_parallel_part`.
    """
    base = context.get("baseline")
    lr = base["initial_learning_rate"] if base else 1e-3
    return model_parallel_part(task, hidden=config.hidden, batch_size=config.batch_size,
                               epochs=config.worker_epochs, learning_rate=lr,
                               seed=context["seeds"][0], rounds=config.timing_repeats)


# timing and memory do not depend on the learning rate: the sweep is not needed
register_part("model_parallel", run_model_parallel, default=False, needs_baseline=False)
