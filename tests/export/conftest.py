"""Export tests marked ``crosscheck`` (ARM under qemu, Cortex-M4 sizes, wide sweeps) run only
when asked for: ``pytest -m crosscheck`` (``make crosscheck``) or ``MINSCALE_CROSSCHECK=1``.
They are long, so ``make test`` skips them."""
from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    wanted = "crosscheck" in (config.option.markexpr or "") or \
        os.environ.get("MINSCALE_CROSSCHECK") == "1"
    if wanted:
        return
    skip = pytest.mark.skip(reason="export crosscheck: run with -m crosscheck")
    here = os.path.dirname(__file__)
    for item in items:
        if "crosscheck" in item.keywords and str(item.fspath).startswith(here):
            item.add_marker(skip)
