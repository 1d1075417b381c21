"""The user's property tests shown in docs/testing.md, collected and run as tests of the suite.

The code is read from the page -- the ```python blocks right below a
``<!-- docs-example: property-test -->`` line -- and executed into this module, so pytest
collects the ``test_*`` functions the page defines. The page is the single source: a change
to the example there changes this test.
"""
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
MARKER = "<!-- docs-example: property-test -->"


def example_blocks(text):
    """The code of every ```python block whose fence follows MARKER (blank lines between)."""
    pattern = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```", re.S)
    return pattern.findall(text)


BLOCKS = example_blocks(PAGE.read_text(encoding="utf-8"))
for _i, _code in enumerate(BLOCKS):
    exec(compile(_code, f"{PAGE}:example{_i}", "exec"), globals())


def test_the_page_defines_property_tests():
    names = [n for n, f in globals().items() if n.startswith("test_") and callable(f)
             and n != "test_the_page_defines_property_tests"]
    assert BLOCKS, f"{PAGE} has no block marked {MARKER}"
    assert len(names) >= 2, names
    # each is a hypothesis test (it carries the hypothesis attribute @given adds)
    assert all(hasattr(globals()[n], "hypothesis") for n in names), names
