"""The docs cannot go stale: their code runs, their references exist, the whole API is in them.

1. Every ```python block of README.md and docs/*.md runs. The blocks of one file run in order
   in one namespace (a page reads as one session), in a fresh temporary working directory.
   A block is left out only when the line right above its fence is
   ``<!-- docs-test: skip: REASON -->`` (REASON required; see docs/testing.md).
2. Every ``tests/FILE.py::NAME`` and ``minscale/FILE.py::NAME`` reference in docs/ names an
   existing file and a top-level function or class (or ``Class::method``) in it.
3. Every public name of minscale -- the names in each public module's ``__all__``, the public
   functions and classes of public modules without one, and the kernels of the reference
   backend -- appears in docs/ qualified by its module (``prune.magnitude_mask``,
   ``ms.Sequential``) or as a path reference (``minscale/prune.py::magnitude_mask``).
4. Relative links between the pages point at files that exist, and every formula page names
   at least one test.
"""
import ast
import importlib
import inspect
import linecache
import pkgutil
import re
import types
from pathlib import Path

import pytest

import minscale

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SKIP = re.compile(r"^<!-- docs-test: skip: (?P<reason>\S.*?) -->$")
# a skip is an exception: the docs as a whole must stay executable
MAX_SKIPS = 6

#: pages that state formulas, each of which must name the tests that check them
FORMULA_PAGES = ["dense-layers.md", "mse.md", "optimizers.md", "schedules.md", "pruning.md",
                 "quantization.md", "parallel.md", "model-format.md", "backends.md",
                 "training.md", "data.md"]
REQUIRED_PAGES = ["index.md", "testing.md", "cli.md", *FORMULA_PAGES]


def python_blocks(path):
    """[(first line number, code, skip reason or None)] of the ```python blocks of a file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() in ("```python", "```py"):
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"{path.name}:{i + 1}: ```python block is never closed")
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            match = SKIP.match(lines[k].strip()) if k >= 0 else None
            blocks.append((start + 1, "\n".join(lines[start:j]) + "\n",
                           match.group("reason") if match else None))
            i = j + 1
        else:
            i += 1
    return blocks


def doc_id(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOC_FILES, ids=doc_id)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    from minscale import kernels
    monkeypatch.chdir(tmp_path)
    # a page may switch backends; the next test must find the choice it had
    monkeypatch.setattr(kernels, "_forced", kernels._forced)
    monkeypatch.setattr(kernels, "_active", kernels._active)
    monkeypatch.setattr(kernels, "_module", kernels._module)
    namespace = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for line, code, skip in python_blocks(path):
        if skip is not None:
            continue
        filename = f"{doc_id(path)}:{line}"
        # registered so that a failing block's traceback shows its lines
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            exec(compile(code, filename, "exec"), namespace)
        except BaseException as exc:
            exc.add_note(f"in the ```python block of {doc_id(path)} starting at line {line}")
            raise


def test_skip_markers_are_few_and_each_stands_above_a_block():
    skipped = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        markers = [ln for ln in text.splitlines() if ln.strip().startswith("<!-- docs-test")]
        for marker in markers:
            assert SKIP.match(marker.strip()), f"{doc_id(path)}: malformed marker {marker!r}"
        blocks = [b for b in python_blocks(path) if b[2] is not None]
        assert len(blocks) == len(markers), f"{doc_id(path)}: a skip marker stands above no block"
        skipped += [(doc_id(path), line, reason) for line, _, reason in blocks]
    assert len(skipped) <= MAX_SKIPS, f"too many skipped blocks: {skipped}"


def test_required_pages_exist_and_the_index_links_them():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in REQUIRED_PAGES + ["study.md"]:
        if page != "index.md":
            assert f"]({page})" in index, f"docs/index.md does not link {page}"
    for page in REQUIRED_PAGES:
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


def test_every_formula_page_names_a_test():
    for page in FORMULA_PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        assert re.search(r"tests/[\w/]+\.py::\w+", text), f"docs/{page} names no test"


def test_relative_links_resolve():
    broken = []
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", path.read_text("utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL
            if not (path.parent / target).exists():
                broken.append(f"{doc_id(path)} -> {target}")
    assert not broken, f"broken links: {broken}"


# --- references ----------------------------------------------------------------------------

def top_level_names(path):
    """Names defined at module level of a Python file: functions, classes ("Class::method",
    "Class.method" for their methods) and assigned names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.update({f"{node.name}::{item.name}", f"{node.name}.{item.name}"})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


REFERENCE = re.compile(r"\b((?:tests|minscale|benchmarks)/[\w/]+\.py)::(\w+(?:(?:::|\.)\w+)?)")


def doc_references():
    refs = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            refs += [(doc_id(path), number, f, n) for f, n in REFERENCE.findall(line)]
    return refs


def test_docs_reference_tests():
    assert sum(1 for *_, f, _ in doc_references() if f.startswith("tests/")) >= 40


def test_every_reference_exists():
    cache, missing = {}, []
    for doc, line, file, name in doc_references():
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{doc}:{line}: {file} does not exist")
            continue
        if file not in cache:
            cache[file] = top_level_names(path)
        if name not in cache[file]:
            missing.append(f"{doc}:{line}: {file} defines no {name}")
    assert not missing, "\n".join(missing)


# --- API coverage --------------------------------------------------------------------------

def public_modules():
    """minscale and every submodule without an underscore-led component (no __main__)."""
    out = [minscale]
    for info in pkgutil.walk_packages(minscale.__path__, "minscale."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts):
            continue
        out.append(importlib.import_module(info.name))
    return out


def public_names(module):
    """Documented surface of `module`: (name, object) pairs."""
    if hasattr(module, "__all__"):
        names = [n for n in module.__all__ if not (n.startswith("__") and n.endswith("__"))]
        pairs = [(n, getattr(module, n)) for n in names]
        return [(n, o) for n, o in pairs if not isinstance(o, types.ModuleType)]
    return [(n, o) for n, o in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
            and o.__module__ == module.__name__]


def module_path(name):
    parts = name.split(".")
    file = ROOT / Path(*parts).with_suffix(".py")
    return str(Path(*parts).with_suffix(".py")) if file.is_file() else str(
        Path(*parts, "__init__.py"))


def exporters():
    """id of every public object -> the modules that export it under its name."""
    out = {}
    for module in public_modules():
        for name, obj in public_names(module):
            out.setdefault((name, id(obj)), set()).add(module.__name__)
    return out


def accepted_forms(module_name, name, obj, exported_by=()):
    """Spellings that count as documenting `name` of `module_name`: qualified by any module
    that exports the same object (``parallel.LocalComm`` documents
    ``minscale.parallel.local.LocalComm``) or by the module that defines it."""
    owners = {module_name, *exported_by}
    defined_in = getattr(obj, "__module__", None)
    if isinstance(defined_in, str) and defined_in.startswith("minscale"):
        owners.add(defined_in)
    forms = set()
    for owner in owners:
        forms.add(f"{module_path(owner)}::{name}")
        short = owner.split(".")[-1]
        forms.update({f"{short}.{name}", f"{owner}.{name}"})
        if owner == "minscale":
            forms.add(f"ms.{name}")
    return forms


def documented(text, forms):
    return any(re.search(rf"(?<![\w]){re.escape(f)}(?!\w)", text) for f in forms)


def test_every_public_name_appears_in_the_docs():
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))
    missing, exported = [], exporters()
    for module in public_modules():
        for name, obj in public_names(module):
            forms = accepted_forms(module.__name__, name, obj, exported[(name, id(obj))])
            if not documented(text, forms):
                missing.append(f"{module.__name__}.{name}")
    from minscale.kernels import _numpy
    for name, obj in vars(_numpy).items():
        if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == _numpy.__name__:
            if not documented(text, {f"kernels.{name}", f"minscale/kernels/_numpy.py::{name}"}):
                missing.append(f"minscale.kernels.{name}")
    assert not missing, f"{len(missing)} public names are not in docs/: {missing}"
