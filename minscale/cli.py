"""The ``minscale`` command: one sub-command per module in :mod:`minscale.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Bad input -- a ``ValueError``, ``TypeError``, missing file, or an
argument error -- prints one line on stderr and exits with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading

from . import commands
from ._version import __version__
from .kernels import set_backend
from .parallel import CommError, WorkerError, abort_mpi_job

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A command-line mistake; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # "minscale: error:" for a sub-command too (argparse would say "minscale study:"),
        # the one prefix every other failure has; the message names the argument
        raise UsageError(f"minscale: error: {message}")


def _command_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__)
                   if not m.name.startswith("_"))
    return [importlib.import_module(f"minscale.commands.{name}") for name in names]


def build_parser():
    """The argparse parser with every sub-command registered.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(prog="minscale", description="Train, prune, quantize and scale dense "
                     "models, and measure what each does (NumPy + Numba).")
    parser.add_argument("--version", action="version", version=f"minscale {__version__}")
    parser.add_argument("--backend", choices=("numpy", "numba"),
                        help="kernel backend (default: numba if it imports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv=None):
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 2 on bad input (a ValueError or TypeError, a missing, unreadable or
        unwritable file, training that diverged -- ``minscale.train.DivergenceError``);
        1 when writing a file fails for another reason (disk full, ...); 130 on Ctrl-C;
        143 on SIGTERM; 141 when stdout is a pipe closed early (``minscale info m.npz |
        head -3``: nothing is printed then, as a command killed by SIGPIPE would do).
        Every failure but the last prints exactly one line on stderr, no traceback.

    Notes
    -----
    For the duration of the command SIGTERM raises KeyboardInterrupt (the previous handler
    is restored afterwards), so ``timeout`` or ``kill`` shuts data-parallel workers down and
    frees their shared memory exactly as Ctrl-C does. The BrokenPipeError handling follows
    the Python documentation (``signal`` module, "Note on SIGPIPE"): stdout is pointed at
    devnull so that the interpreter's final flush does not fail again.
    """
    try:
        with _sigterm_raises_keyboard_interrupt():
            args = build_parser().parse_args(argv)
            if args.command is None:
                raise UsageError("minscale: error: a command is required (try 'minscale "
                                 "--help')")
            if args.backend:
                set_backend(args.backend)
            code = int(args.func(args) or 0)
            # inside the try: a closed pipe shows up on this flush at the latest
            sys.stdout.flush()
            return code
    except BrokenPipeError:
        _silence_stdout()
        abort_mpi_job(141)
        return 141
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError,
            NotADirectoryError, ImportError, FloatingPointError) as exc:
        return _fail(f"minscale: error: {_describe(exc)}", 2)
    except OSError as exc:
        return _fail(f"minscale: error: {_describe(exc)}", 1)
    except RuntimeError as exc:
        if not isinstance(exc, (CommError, WorkerError)):
            raise
        # a failed or timed-out worker group: one line, the cause first
        return _fail(f"minscale: error: {str(exc).splitlines()[0]}", 1)
    except _Terminated:
        return _fail("minscale: terminated", 143)
    except KeyboardInterrupt:
        return _fail("minscale: interrupted", 130)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``except KeyboardInterrupt`` cleans up."""


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_raises_keyboard_interrupt():
    # signal.signal works in the main thread only; elsewhere (main() called from a worker
    # thread) the process keeps its handler
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _silence_stdout():
    """Point stdout at devnull after a BrokenPipeError, so later flushes cannot fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture object): nothing is left to flush
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _describe(exc):
    """One line for `exc`: an OSError without its "[Errno N]" prefix, with its file name."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text = f"{exc.filename!r}: {text}"
        return text
    return str(exc).replace("\n", " ")


def _fail(message, code):
    print(message, file=sys.stderr)
    # under mpiexec, one rank returning quietly would leave the others blocked in a collective
    abort_mpi_job(code)
    return code
