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
