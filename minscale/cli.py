"""The ``minscale`` command: one sub-command per module in :mod:`minscale.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Bad input -- a ``ValueError``, ``TypeError``, missing file, or an
argument error -- prints one line on stderr and exits with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A command-line mistake; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def _command_modules():
    from . import commands
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__)
                   if not m.name.startswith("_"))
    return [importlib.import_module(f"minscale.commands.{name}") for name in names]


def build_parser():
    """The argparse parser with every sub-command registered.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__
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
        0 on success, 2 on bad input, 130 on Ctrl-C.
    """
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("minscale: error: a command is required (try 'minscale --help')")
        if args.backend:
            from .kernels import set_backend
            set_backend(args.backend)
        return int(args.func(args) or 0)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError,
            ImportError) as exc:
        return _fail(f"minscale: error: {exc}", 2)
    except KeyboardInterrupt:
        return _fail("minscale: interrupted", 130)


def _fail(message, code):
    print(message, file=sys.stderr)
    # under mpiexec, one rank returning quietly would leave the others blocked in a collective
    from .parallel.mpi import abort_mpi_job
    abort_mpi_job(code)
    return code
