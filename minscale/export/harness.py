"""Compile generated C with a real compiler and run it on given rows: the equality proof's tool.

:func:`run_c` writes several exported models and one driver ``main.c`` into a directory,
compiles them into ONE program (one compiler run for many models keeps the tests fast), runs it
(natively, or under an emulator such as ``qemu-arm``) and parses what it prints: per model, the
output codes (or float32 values) of each input row, and optionally the time per row.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np

from .c99 import c_sources, write_files

__all__ = ["STRICT_FLAGS", "CORTEX_M4_FLAGS", "find_compiler", "run_c", "cortex_m4_size"]

#: the flags the tests compile every generated file with
STRICT_FLAGS = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2")


def find_compiler():
    """The first of ``cc``, ``gcc``, ``clang`` on PATH, or None."""
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _c_array(name, arr, ctype):
    flat = np.asarray(arr).reshape(-1)
    if ctype == "float":
        items = [f"{float(v):.8e}f" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    if not items:
        items = ["0"]
    body = ",\n".join(", ".join(items[i:i + 16]) for i in range(0, len(items), 16))
    return f"static const {ctype} {name}[{len(items)}] = {{\n{body}\n}};"


def _driver(entries, repeat):
    """main.c: for each model, predict every row (`repeat` times when timing) and print."""
    lines = ["#include <stdio.h>", "#include <time.h>"]
    for e in entries:
        lines.append(f'#include "{e["name"]}.h"')
    for e in entries:
        lines.append(_c_array(f"in_{e['name']}", e["inputs"], e["ctype"]))
        lines.append(f"static {e['ctype']} out_{e['name']}[{max(1, e['d_out'])}];")
    lines += ["int main(void)", "{", "    int r, t;", "    clock_t start;", "    double sec;"]
    for e in entries:
        n, d_in, d_out, N, ct = e["n"], e["d_in"], e["d_out"], e["name"], e["ctype"]
        fmt = '"%.8e "' if ct == "float" else '"%d "'
        cast = "(double)" if ct == "float" else "(int)"
        lines += [
            f'    printf("model {N}\\n");',
            "    start = clock();",
            f"    for (t = 0; t < {repeat}; ++t) {{",
            f"        for (r = 0; r < {n}; ++r) {{",
            f"            {N}_predict(in_{N} + r * {d_in}, out_{N});",
            "        }",
            "    }",
            "    sec = (double)(clock() - start) / CLOCKS_PER_SEC;",
            f'    printf("seconds_per_row %.9e\\n", sec / ({repeat}.0 * {max(n, 1)}.0));',
            f"    for (r = 0; r < {n}; ++r) {{",
            "        int j;",
            f"        {N}_predict(in_{N} + r * {d_in}, out_{N});",
            f"        for (j = 0; j < {d_out}; ++j) {{",
            f"            printf({fmt}, {cast}out_{N}[j]);",
            "        }",
            '        printf("\\n");',
            "    }",
        ]
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def run_c(jobs, compiler=None, flags=STRICT_FLAGS, runner=None, directory=None, repeat=1,
          extra_flags=(), timeout=600):
    """Export, compile into one program, run, and return each model's outputs.

    Parameters
    ----------
    jobs : list of dict
        Each with ``model`` (QuantizedModel or Sequential), ``inputs`` (n, d_in) int codes (from
        ``model.quantize_input``) or floats, and optional ``name`` (default ``m<i>``),
        ``rounding`` (default "double") and ``kind``.
    compiler : str, optional
        Defaults to :func:`find_compiler`.
    flags : sequence of str
        Default :data:`STRICT_FLAGS`.
    runner : list of str, optional
        Prefix of the run command, e.g. ``["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]``.
    directory : str, optional
        Where to write (a temporary directory, removed afterwards, by default).
    repeat : int, default 1
        Calls per row in the timed loop.
    extra_flags : sequence of str
        Appended after the sources (``-lm`` is always added).
    timeout : float, seconds

    Returns
    -------
    list of dict
        Per job: ``outputs`` (n, d_out) int64 codes or float64 values, ``seconds_per_row``.

    Raises
    ------
    RuntimeError
        If no compiler is found, compilation fails (with the compiler's message) or the
        program fails.
    """
    compiler = compiler or find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang)")
    owned = directory is None
    directory = directory or tempfile.mkdtemp(prefix="minscale_c_")
    try:
        entries, sources = [], []
        for i, job in enumerate(jobs):
            name = job.get("name", f"m{i}")
            files = c_sources(job["model"], name=name, rounding=job.get("rounding", "double"),
                              kind=job.get("kind"))
            write_files(directory, files)
            sources.append(os.path.join(directory, f"{name}.c"))
            x = np.asarray(job["inputs"])
            ctype = files[f"{name}.h"].split(f"{name}_predict(const ")[1].split(" *")[0]
            d_out = int(files[f"{name}.h"].split(f"{name.upper()}_OUTPUT_SIZE ")[1].split()[0])
            entries.append({"name": name, "inputs": x, "ctype": ctype, "n": x.shape[0],
                            "d_in": x.shape[1], "d_out": d_out})
        main = os.path.join(directory, "main.c")
        with open(main, "w") as f:
            f.write(_driver(entries, repeat))
        exe = os.path.join(directory, "prog")
        cmd = [compiler, *flags, "-o", exe, main, *sources, *extra_flags, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compilation failed: {' '.join(cmd)}\n{proc.stderr}")
        proc = subprocess.run([*(runner or []), exe], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"the compiled program failed ({proc.returncode}): "
                               f"{proc.stderr}")
        return _parse(proc.stdout, entries)
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _parse(text, entries):
    blocks = text.split("model ")[1:]
    out = []
    for e, block in zip(entries, blocks):
        lines = block.strip("\n").split("\n")
        spr = float(lines[1].split()[1])
        rows = [line.split() for line in lines[2:2 + e["n"]]]
        dtype = np.float64 if e["ctype"] == "float" else np.int64
        arr = np.array(rows, dtype=dtype).reshape(e["n"], e["d_out"])
        out.append({"outputs": arr, "seconds_per_row": spr})
    return out


#: Cortex-M4 build of the size report: the issue's flags, plus the strict warnings
CORTEX_M4_FLAGS = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror",
                   "-mcpu=cortex-m4", "-mthumb", "-Os")


def cortex_m4_size(model, name="model", compiler="arm-none-eabi-gcc", size_tool=None,
                   directory=None, rounding="double"):
    """text/data/bss bytes of the generated source compiled for a Cortex-M4.

    Parameters
    ----------
    model : QuantizedModel, FixedPointModel or Sequential
    name : str
    compiler : str, default "arm-none-eabi-gcc"
    size_tool : str, optional
        Defaults to the compiler's ``-size`` sibling (``arm-none-eabi-size``).
    directory : str, optional
    rounding : {"double", "single"}

    Returns
    -------
    dict
        ``text``, ``data``, ``bss`` of the object file (Berkeley format of ``size``).

    Raises
    ------
    RuntimeError
        If the compiler or size tool is missing or fails.
    """
    size_tool = size_tool or compiler.replace("-gcc", "-size")
    for tool in (compiler, size_tool):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found")
    owned = directory is None
    directory = directory or tempfile.mkdtemp(prefix="minscale_m4_")
    try:
        write_files(directory, c_sources(model, name=name, rounding=rounding))
        obj = os.path.join(directory, f"{name}.o")
        cmd = [compiler, *CORTEX_M4_FLAGS, "-c", os.path.join(directory, f"{name}.c"),
               "-o", obj]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compilation failed: {' '.join(cmd)}\n{proc.stderr}")
        proc = subprocess.run([size_tool, obj], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{size_tool} failed: {proc.stderr}")
        text, data, bss = (int(v) for v in proc.stdout.splitlines()[1].split()[:3])
        return {"text": text, "data": data, "bss": bss}
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
