"""Seeds: one study measurement repeated from several seeds, in worker processes if asked,
and the per-variant record of those repeats.

:func:`map_seeds` runs ``fn(seed)`` for every seed, in this process (``jobs=1``) or in
``jobs`` spawned worker processes; every run pins the BLAS thread pool to the same size in
both modes, so the numbers are the same whatever ``jobs`` is (each seed's run is itself
deterministic). :func:`variant_record` turns the per-seed losses of a variant and of its
control into the fields every variant of a study result carries (``docs/study.md``).
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .._checks import check_int
from ..kernels import get_backend, set_backend
from .stats import mean_ci95, paired_difference_ci95, verdict

__all__ = ["map_seeds", "seed_pool", "variant_record", "study_seeds"]


def study_seeds(first, n):
    """The seeds of a study with `n` repeats: ``first, first + 1, ..., first + n - 1``.

    Parameters
    ----------
    first : int, >= 0
        ``--seed``: also the seed of the fixed data split.
    n : int, >= 1
        ``--seeds``.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError, TypeError
        `first` < 0 or `n` < 1, or not integers.
    """
    first = check_int("first", first, 0)
    n = check_int("n", n, 1)
    return [first + i for i in range(n)]


def _run_seed(fn, seed, blas_threads, backend):
    """``fn(seed)`` with the BLAS pool pinned (and, in a worker, the parent's backend)."""
    if backend is not None:
        set_backend(backend)
    limits = None
    if blas_threads is not None:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (heavy, optional)
        limits = threadpool_limits(limits=blas_threads, user_api="blas")
    try:
        return fn(seed)
    except Exception as exc:
        # name the seed, keep the type: the command line maps ValueError etc. to exit 2
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            try:
                renamed = type(exc)(f"seed {seed}: {exc.args[0]}")
            except Exception:  # noqa: BLE001 (an exception class with another signature)
                raise exc from None
            raise renamed from exc
        raise
    finally:
        if limits is not None:
            limits.restore_original_limits()


@contextlib.contextmanager
def seed_pool(jobs):
    """A pool of `jobs` spawned worker processes for several :func:`map_seeds` calls, or None.

    Starting a worker costs seconds (imports, JIT cache loads); a study maps its seeds twice
    (learning rates, then the variants) and reuses one pool for both.

    Parameters
    ----------
    jobs : int, >= 1
        1 yields None (everything runs in this process).

    Yields
    ------
    concurrent.futures.ProcessPoolExecutor or None
    """
    jobs = check_int("jobs", jobs, 1)
    if jobs == 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def map_seeds(fn, seeds, jobs=1, blas_threads=1, pool=None):
    """``[fn(s) for s in seeds]``, in `jobs` worker processes when `jobs` > 1.

    Parameters
    ----------
    fn : callable
        ``fn(seed) -> result``. With ``jobs > 1`` it and its results must be picklable: a
        top-level function, or a :func:`functools.partial` of one with picklable arguments.
    seeds : sequence of int, length n >= 1
    jobs : int, >= 1, default 1
        Worker processes (``spawn`` start method: no state is inherited but `fn`'s
        arguments and the kernel backend); at most n are started.
    blas_threads : int or None, default 1
        BLAS threads during each run (threadpoolctl), the same in both modes so that the
        results are identical; None keeps the library default.
    pool : ProcessPoolExecutor, optional
        From :func:`seed_pool`: run there (whatever `jobs`) instead of starting workers.

    Returns
    -------
    list
        The results in the order of `seeds`.

    Raises
    ------
    Exception
        The first (in seed order) exception of a run, of the same type, its message
        prefixed with ``"seed S: "``.
    RuntimeError
        A worker process died (killed, out of memory) before returning.
    ValueError, TypeError
        `jobs` < 1, `seeds` empty or not integers, `fn` not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    seeds = [check_int("seeds[i]", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    jobs = check_int("jobs", jobs, 1)
    if blas_threads is not None:
        blas_threads = check_int("blas_threads", blas_threads, 1)
    if pool is None and (jobs == 1 or len(seeds) == 1):
        return [_run_seed(fn, s, blas_threads, None) for s in seeds]
    if pool is not None:
        return _map_in(pool, fn, seeds, blas_threads)
    with seed_pool(min(jobs, len(seeds))) as own:
        return _map_in(own, fn, seeds, blas_threads)


def _map_in(pool, fn, seeds, blas_threads):
    backend = get_backend()
    futures = [pool.submit(_run_seed, fn, s, blas_threads, backend) for s in seeds]
    results = []
    try:
        for s, future in zip(seeds, futures):
            try:
                results.append(future.result())
            except BrokenProcessPool:
                raise RuntimeError(f"the worker process running seed {s} died before "
                                   "returning (killed, or out of memory?)") from None
    finally:
        for future in futures:
            future.cancel()
    return results


def _none_if_nan(x):
    return None if x is None or not math.isfinite(x) else float(x)


def variant_record(name, losses, control_name, control_losses, seeds, **extra):
    """The seed-aggregated fields of one variant of a study result.

    Parameters
    ----------
    name : str
        The variant, e.g. ``"prune global 0.7"``.
    losses : sequence of float or None, length n
        Its test loss per seed (None: diverged in that seed).
    control_name : str
        Its control, e.g. ``"dense fine-tuned 2 x 10 epochs"``.
    control_losses : sequence of float or None, length n
        The control's test loss per seed, paired with `losses` by seed.
    seeds : sequence of int, length n
    **extra
        Further fields copied into the record (after the computed ones, which they may not
        replace).

    Returns
    -------
    dict
        ``name``; ``seeds`` (list); ``losses`` (per seed); ``loss_mean``; ``loss_ci95``
        ``[low, high]`` (95 % t-interval, :func:`minscale.study.stats.mean_ci95`; None ends
        with one seed); ``control`` = ``{name, losses, loss_mean, loss_ci95}``; ``effect`` =
        loss_mean / control loss_mean; ``difference_ci95`` = the 95 % interval of the paired
        differences variant - control; ``verdict`` = ``"better"``, ``"worse"`` or ``"no
        significant difference"`` (:func:`minscale.study.stats.verdict`). When any seed
        diverged (a None loss) every statistic of the affected side is None and the verdict
        is ``"diverged"``.

    Raises
    ------
    ValueError
        Lengths that differ from ``len(seeds)``, or an `extra` key that would replace a
        computed field.

    Examples
    --------
    >>> r = variant_record("v", [1.0, 1.2], "c", [1.0, 1.0], [0, 1])
    >>> r["loss_mean"], round(r["effect"], 3), r["verdict"]
    (1.1, 1.1, 'no significant difference')
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    losses = [_none_if_nan(v) for v in losses]
    control_losses = [_none_if_nan(v) for v in control_losses]
    if len(losses) != n or len(control_losses) != n:
        raise ValueError(f"losses and control_losses must have one value per seed ({n}), got "
                         f"{len(losses)} and {len(control_losses)}")

    def summary(values):
        if any(v is None for v in values):
            return None, [None, None]
        m, lo, hi = mean_ci95(values)
        return m, [_none_if_nan(lo), _none_if_nan(hi)]

    mean, ci = summary(losses)
    c_mean, c_ci = summary(control_losses)
    record = {"name": name, "seeds": seeds, "losses": losses, "loss_mean": mean,
              "loss_ci95": ci,
              "control": {"name": control_name, "losses": control_losses, "loss_mean": c_mean,
                          "loss_ci95": c_ci}}
    if mean is None or c_mean is None:
        record.update(effect=None, difference_ci95=[None, None], verdict="diverged")
    else:
        _, lo, hi = paired_difference_ci95(losses, control_losses)
        record.update(effect=(mean / c_mean if c_mean > 0 else None),
                      difference_ci95=[_none_if_nan(lo), _none_if_nan(hi)],
                      verdict=verdict(losses, control_losses))
    clash = set(extra) & set(record)
    if clash:
        raise ValueError(f"extra fields must not replace computed ones: {sorted(clash)}")
    record.update(extra)
    return record
