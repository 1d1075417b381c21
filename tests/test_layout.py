"""The test tree's layout rules.

pytest's default ``prepend`` import mode imports every test file by its basename (the folder
goes on ``sys.path``; test folders have no ``__init__.py``, so that ``tests/io`` is never a
package named ``io``), and subprocess helpers import test modules by basename too: two test
files with one basename would shadow each other.
"""
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).parent


def test_test_file_basenames_are_unique():
    seen = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        # conftest.py files are per folder by design; pytest imports each by its path
        if "golden" not in path.parts and path.name != "conftest.py":
            seen[path.name].append(str(path.relative_to(TESTS)))
    twice = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not twice, f"test files share a basename: {twice}"


def test_test_folders_are_not_packages():
    packages = [str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py")]
    assert not packages, f"test folders must not be packages (prepend import mode): {packages}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # the import-linter contracts see static imports; a package __init__ that re-exports
    # eagerly can still close a cycle at run time, which shows only when that module is the
    # first one imported
    import subprocess
    import sys

    root = TESTS.parent
    modules = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in (root / "minscale").rglob("*.py") if p.name != "__main__.py")
    failed = {}
    for i in range(0, len(modules), 8):
        procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], cwd=root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
                 for m in modules[i:i + 8]}
        for m, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            if proc.returncode:
                failed[m] = err.strip().splitlines()[-1:]
    assert len(modules) > 70 and not failed, failed
