"""PyTorch peers of W5: one process at one thread, and DistributedDataParallel (gloo, k x 1 thread).

Both train the MLP of W5 (``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU``, float32, MSE with
mean reduction, plain SGD) on the same synthetic data (``np.random.default_rng(seed)``: X then
y, standard normal float32), global batch `batch`, one ``torch.randperm`` shuffle per epoch, as
``fit`` does. Under DDP each rank takes the contiguous ``batch // k`` rows of every global
batch, and DDP averages the gradients (gloo allreduce), so every step equals the single-process
step on the whole global batch.

`DDPGroup` keeps its k processes alive between measurements and drives them through queues, so
a benchmark can interleave DDP epochs with its other candidates and leave process start-up out
of the rate (as W5's marginal rate does for minscale). Processes are started with
``torch.multiprocessing.spawn(join=False, daemon=True)``; the process group is initialised on
``tcp://127.0.0.1:<free port>`` with ``GLOO_SOCKET_IFNAME=lo``, so all traffic stays on the
loopback interface. Every wait is bounded (`timeout` seconds); on a failure or a timeout the
processes are terminated and the error is raised in the parent.

Standalone: ``python -m benchmarks.ddp_bench [--rounds 5]`` prints one JSON object.
"""
from __future__ import annotations

import datetime
import os
import queue
import socket
import time
import traceback

import numpy as np

WIDTHS = [784, 300, 100, 10]
BATCH = 256
STEPS = 40


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(n, widths, seed=0):
    """The synthetic set of W5: X (n, widths[0]) then y (n, widths[-1]), float32 normal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, widths[0]), dtype=np.float32)
    y = rng.standard_normal((n, widths[-1]), dtype=np.float32)
    return X, y


def build_mlp(torch, widths, seed=0):
    """``nn.Sequential`` of Linear + ReLU for every hidden width, a plain Linear output."""
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


class _Trainer:
    """Model, optimizer, data and shuffling generator of one process (rank of world)."""

    def __init__(self, torch, widths, batch, n, seed, lr, rank=0, world=1, wrap=None):
        self.torch = torch
        X, y = make_data(n, widths, seed)
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)
        model = build_mlp(torch, widths, seed)
        self.model = wrap(model) if wrap is not None else model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss = torch.nn.MSELoss()
        self.gen = torch.Generator().manual_seed(seed)
        self.batch, self.steps = batch, n // batch
        self.shard = batch // world
        self.offset = rank * self.shard

    def epochs(self, k):
        """Run k epochs of `steps` SGD steps on this rank's shard of every global batch."""
        n = self.X.shape[0]
        for _ in range(k):
            perm = self.torch.randperm(n, generator=self.gen)
            for i in range(self.steps):
                start = i * self.batch + self.offset
                idx = perm[start:start + self.shard]
                self.opt.zero_grad(set_to_none=True)
                self.loss(self.model(self.X[idx]), self.y[idx]).backward()
                self.opt.step()


class TorchSingle:
    """The single-process peer: call `epochs` inside a 1-thread block (``common.threads(1)``).

    Parameters
    ----------
    widths : list of int, batch : int, n : int (samples per epoch, a multiple of batch)
    seed : int, lr : float
    """

    def __init__(self, widths=WIDTHS, batch=BATCH, n=BATCH * STEPS, seed=0, lr=1e-3):
        import torch

        self._trainer = _Trainer(torch, widths, batch, n, seed, lr)

    def epochs(self, k):
        """Train k epochs in this process (threads as the caller set them)."""
        self._trainer.epochs(k)


def _ddp_worker(rank, world, port, threads, widths, batch, n, seed, lr, cmds, results, timeout):
    """Entry point of one DDP rank (module level, so spawn can import it)."""
    try:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's pairs on the loopback interface
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set while spawn re-imported the parent's main module
            pass
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
        trainer = _Trainer(torch, widths, batch, n, seed, lr, rank, world,
                           wrap=DistributedDataParallel)
        results.put(("ready", rank, None))
        while True:
            cmd = cmds[rank].get(timeout=max(timeout, 300))  # parent gone: stop eventually
            if cmd[0] == "stop":
                break
            dist.barrier()
            t = time.perf_counter()
            trainer.epochs(cmd[1])
            dist.barrier()
            results.put(("done", rank, time.perf_counter() - t))
        dist.destroy_process_group()
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        raise


class DDPGroup:
    """k DDP processes (gloo, `threads` each) kept alive between measurements.

    Parameters
    ----------
    world : int, default 2
    threads : int, default 1
        ``torch.set_num_threads`` in each rank (one inter-op thread).
    widths, batch, n, seed, lr
        As `TorchSingle`; `batch` is the global batch, split into `world` contiguous shards.
    timeout : float, default 120
        Seconds allowed for start-up and for any one command; also gloo's collective timeout.

    Use as a context manager; `epochs(k)` returns the seconds the slowest rank took for k
    epochs (barrier before and after, so the ranks start and end together).
    """

    def __init__(self, world=2, threads=1, widths=WIDTHS, batch=BATCH, n=BATCH * STEPS, seed=0,
                 lr=1e-3, timeout=120.0):
        import torch.multiprocessing as tmp

        if batch % world:
            raise ValueError(f"batch must be a multiple of world={world}, got {batch}")
        self.world, self.timeout = world, timeout
        mpctx = tmp.get_context("spawn")
        self._cmds = [mpctx.Queue() for _ in range(world)]
        self._results = mpctx.Queue()
        self._ctx = tmp.spawn(_ddp_worker, args=(world, free_port(), threads, list(widths), batch,
                                                 n, seed, lr, self._cmds, self._results,
                                                 timeout),
                              nprocs=world, join=False, daemon=True)
        try:
            self._collect("ready")
        except BaseException:
            self._kill()
            raise

    def _collect(self, kind):
        out = [None] * self.world
        deadline = time.monotonic() + self.timeout
        for _ in range(self.world):
            while True:
                try:
                    tag, rank, value = self._results.get(timeout=1.0)
                    break
                except queue.Empty:
                    pass
                # a rank that died before it could report (e.g. killed, or failed while
                # starting up) would otherwise cost the whole timeout
                for r, p in enumerate(self._ctx.processes):
                    if p.exitcode is not None:
                        raise RuntimeError(f"DDP rank {r} exited with code {p.exitcode} "
                                           f"before reporting {kind!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DDP ranks did not report {kind!r} within "
                                       f"{self.timeout} s")
            if tag == "error":
                raise RuntimeError(f"DDP rank {rank} failed:\n{value}")
            out[rank] = value
        return out

    def epochs(self, k):
        """Seconds for k epochs on every rank (the slowest rank's time)."""
        for q in self._cmds:
            q.put(("run", k))
        return max(self._collect("done"))

    def _kill(self):
        for p in self._ctx.processes:
            if p.is_alive():
                p.terminate()
        for p in self._ctx.processes:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(1)

    def close(self):
        """Stop the ranks (bounded by `timeout`), terminating any that do not stop."""
        for q in self._cmds:
            try:
                q.put(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + self.timeout
        try:
            while not self._ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    break
        finally:
            self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None):
    import argparse
    import json

    from . import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    common.torch_module()
    n = BATCH * STEPS
    with common.threads(1), DDPGroup() as ddp:
        single = TorchSingle()
        times = common.interleaved({"torch t1": lambda: single.epochs(args.epochs),
                                    "ddp 2x1": lambda: ddp.epochs(args.epochs)}, args.rounds)
    rates = {k: common.summary([args.epochs * n / t for t in v]) for k, v in times.items()}
    scaling = common.summary([a / b for a, b in zip(times["torch t1"], times["ddp 2x1"])])
    print(json.dumps({"samples_per_s": rates, "scaling_2_vs_1": scaling}))


if __name__ == "__main__":
    main()
