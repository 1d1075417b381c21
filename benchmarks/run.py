"""Run every benchmark workload side by side and write ``benchmarks/results/latest.json``.

Usage: ``python -m benchmarks.run [--rounds N] [--only W1,W3,...] [--out PATH]``

Order: machine limits (float32 GEMM, memcpy, core-to-core probe), JIT compile times, W1..W5,
import time, start-up (the demo and the first fit with an empty Numba cache); each workload
interleaves its candidates at 1 and then 2 threads. Prints a table of ratios and the issue's
targets, met or missed. The machine is shared: figures are noisy, so ratios measured within one
run are what to compare, never figures across runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import types

import numpy as np

from . import (
    common,
    import_time,
    startup,
    w1_classic,
    w2_mlp,
    w3_prune,
    w3_sparse,
    w4_quant,
    w5_parallel,
)

# W5allreduce lives in w5_parallel beside W5; this gives it the NAME / run / targets of a module
_w5_allreduce = types.SimpleNamespace(NAME=w5_parallel.NAME_ALLREDUCE,
                                      run=w5_parallel.run_allreduce,
                                      targets=w5_parallel.targets_allreduce)
WORKLOADS = {"W1": w1_classic, "W2": w2_mlp, "W3": w3_prune, "W3sparse": w3_sparse,
             "W4": w4_quant, "W5": w5_parallel, "W5allreduce": _w5_allreduce,
             "import": import_time, "startup": startup}
THREADS = (1, 2)


def compile_times():
    """JIT cost of the W1 path, apart from the warm figures: a fresh process with an empty
    Numba cache (compilation), a second one reusing that cache (loading), then warm calls."""
    code = textwrap.dedent("""
        import time, numpy as np
        t0 = time.perf_counter()
        import minscale as ms
        from minscale import optim, schedules
        ms.set_backend("numba")
        X, y = ms.datasets.make_linear(n_samples=100, seed=42)
        X = np.asarray(X, float).reshape(-1, 1); y = np.asarray(y, float).reshape(-1, 1)
        def fit():
            m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
            m.compile(optimizer=optim.Adam(schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
            m.fit(X, y, epochs=100, batch_size=10, seed=42)
        t1 = time.perf_counter(); fit(); t2 = time.perf_counter(); fit(); t3 = time.perf_counter()
        print(t2 - t1, t3 - t2)
    """)
    with tempfile.TemporaryDirectory(prefix="numba_cache_") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env.pop("MINSCALE_BACKEND", None)
        res = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=common.ROOT,
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                return {"error": out.stderr.strip()[-400:]}
            res.append([float(v) for v in out.stdout.split()])
    return {"W1 first fit, empty cache (compile) s": res[0][0],
            "W1 first fit, warm cache (load) s": res[1][0],
            "W1 warm fit s": res[1][1]}


def machine_limits(probe):
    limits = {"gemm_gflops": {}, "memcpy_gbs": {}}
    for n in THREADS:
        with common.threads(n):
            limits["gemm_gflops"][str(n)] = common.gemm_gflops()
            limits["memcpy_gbs"][str(n)] = common.memcpy_gbs()
    limits["c2c_ns_at_start"] = probe.sample()
    limits["c2c_note"] = probe.note
    return limits


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def table(results, target_rows):
    """Plain-text table: the main ratio of every workload, then the targets."""
    lines = ["workload | threads | figure | median (min..max)", "-" * 78]

    def add(name, nt, label, s):
        lines.append(f"{name} | {nt} | {label} | {_fmt(s['median'])} "
                     f"({_fmt(s.get('min', s['median']))}..{_fmt(s.get('max', s['median']))})")
    r = results.get("W1", {})
    for nt, e in r.get("threads", {}).items():
        for k, s in e["ratios"].items():
            add("W1", nt, k, s)
        for k in ("minscale-numba", "hand-numba", "hand-numba loop only"):
            if k in e["times"]:
                add("W1", nt, f"{k} s", e["times"][k])
    r = results.get("W2", {})
    for label, shape in r.get("shapes", {}).items():
        for nt, e in shape["threads"].items():
            for k, s in e["steps_per_s"].items():
                add(f"W2 {label}", nt, f"{k} steps/s", s)
            lines.append(f"W2 {label} | {nt} | fraction of GEMM peak | "
                         f"{_fmt(e['fraction_of_gemm_peak'])}")
    r = results.get("W3", {})
    for nt, e in r.get("threads", {}).items():
        for k, s in e["ratios"].items():
            add("W3", nt, k, s)
    r = results.get("W3sparse", {})
    for case, c in r.get("cases", {}).items():
        for nt, e in c.get("threads", {}).items():
            add(f"W3sparse {case}", nt, "dense/CSR", e["ratios"]["dense/CSR"])
            add(f"W3sparse {case}", nt, "CSR s per call", e["times"]["csr"])
    r = results.get("W4", {})
    for nt, e in r.get("quantize", {}).get("threads", {}).items():
        lines.append(f"W4 quantize | {nt} | fraction of memcpy (kernel / public) | "
                     f"{_fmt(e['fraction_of_memcpy'])} / {_fmt(e['fraction_of_memcpy_public'])}")
        for k, s in e.get("ratios", {}).items():
            add("W4 quantize", nt, k, s)
    for nt, e in r.get("dense", {}).get("threads", {}).items():
        for k, s in e["gops"].items():
            add("W4 dense", nt, f"{k} GOP/s", s)
        for k, s in e["ratios"].items():
            add("W4 dense", nt, k, s)
        if "speedup_vs_numpy_int8_matmul" in e:
            lines.append(f"W4 dense | {nt} | speedup vs numpy int8 @ | "
                         f"{_fmt(e['speedup_vs_numpy_int8_matmul'])}")
    r = results.get("W5", {})
    if "skipped" in r:
        lines.append(f"W5 | - | skipped | {r['skipped']}")
    elif r:
        for w in (1, 2):
            add("W5", f"{w} worker(s)", "marginal samples/s", r[f"workers_{w}"][
                "marginal_samples_per_s"])
        lines.append(f"W5 | 2 vs 1 | scaling (marginal) | {_fmt(r['scaling_marginal'])}")
        t = r.get("torch", {})
        if "skipped" in t:
            lines.append(f"W5 torch | - | skipped | {t['skipped']}")
        elif t:
            add("W5 torch", "1 process x 1 thread", "samples/s", t["single_1_thread_samples_per_s"])
            add("W5 torch", "DDP gloo 2 x 1 thread", "samples/s", t["ddp_gloo_2x1_samples_per_s"])
            add("W5 torch", "2 vs 1", "scaling DDP (per round)", t["scaling_ddp_per_round"])
            for k, v in r["minscale_vs_torch"].items():
                if k != "note":
                    lines.append(f"W5 | - | minscale/torch samples/s, {k} | {_fmt(v)}")
    r = results.get("W5allreduce", {})
    for key in ("SharedMemoryComm", "MPIComm"):
        if key in r:
            add("W5allreduce 4 MiB", "2 procs x 1", f"{key} s", r[key])
    if "mpi/shm per block" in r:
        add("W5allreduce 4 MiB", "2 procs x 1", "MPI / SHM (per job pair)", r["mpi/shm per block"])
    if "MPIComm_skipped" in r:
        lines.append(f"W5allreduce | - | MPIComm skipped | {r['MPIComm_skipped']}")
    r = results.get("import", {})
    if r:
        add("import", "-", "minscale / numpy", r["ratio minscale/numpy"])
    r = results.get("startup", {})
    for case in ("demo", "first fit"):
        for label in ("empty cache", "reused cache"):
            if case in r:
                add("startup", "-", f"{case}, {label}, wall s", r[case][f"{label} wall s"])
                add("startup", "-", f"{case}, {label}, CPU s", r[case][f"{label} cpu s"])
    lines += ["", "target | value | goal | met", "-" * 78]
    for t in target_rows:
        lines.append(f"{t['target']} | {_fmt(t['value'])} | {_fmt(t['goal'])} | "
                     f"{'yes' if t['met'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="samples per candidate (>= 5)")
    parser.add_argument("--only", default="", help="comma-separated subset of " +
                        ",".join(WORKLOADS))
    parser.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results",
                                                      "latest.json"))
    args = parser.parse_args(argv)
    only = [w for w in args.only.split(",") if w] or list(WORKLOADS)
    import numba  # noqa: F401  (imported before threadpoolctl limits, like numpy and torch)
    common.torch_module()
    probe = common.C2CProbe()
    started = time.time()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                          "numpy": np.__version__, "numba": numba.__version__},
              "threadpools": common.threadpool_report(), "notes": [
                  "shared 2-vCPU machine: figures are noisy; compare ratios within this run",
                  "2-thread figures depend on vCPU placement: see c2c_ns beside them"]}
    torch = common.torch_module()
    report["machine"]["torch"] = torch.__version__ if torch else None
    print("machine limits ...", flush=True)
    limits = machine_limits(probe)
    report["limits"] = limits
    print("JIT compile times ...", flush=True)
    report["jit"] = compile_times()
    ctx = {"threads": THREADS, "rounds": max(5, args.rounds), "probe": probe, "limits": limits}
    results, target_rows = {}, []
    for key in only:
        mod = WORKLOADS[key]
        print(f"{key}: {mod.NAME} ...", flush=True)
        t = time.time()
        try:
            results[key] = mod.run(ctx)
        except ImportError as exc:  # a module of another issue not there yet
            results[key] = {"name": mod.NAME, "skipped": str(exc)}
        results[key]["wall_s"] = time.time() - t
        if "skipped" not in results[key]:
            target_rows += mod.targets(results[key])
    report["workloads"] = results
    report["targets"] = target_rows
    report["wall_s"] = time.time() - started
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    print()
    print(f"GEMM float32 GFLOP/s: t1 {_fmt(limits['gemm_gflops']['1']['median'])}, "
          f"t2 {_fmt(limits['gemm_gflops']['2']['median'])}; memcpy GB/s: "
          f"t1 {_fmt(limits['memcpy_gbs']['1']['median'])}, "
          f"t2 {_fmt(limits['memcpy_gbs']['2']['median'])}; c2c ns: "
          f"{limits['c2c_ns_at_start']}")
    print("JIT:", {k: _fmt(v) for k, v in report["jit"].items()})
    print(table(results, target_rows))
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
