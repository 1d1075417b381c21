"""Fixtures shared by the multi-process training tests (workers, pipeline, compiled DP)."""
import pytest

from minscale.parallel import shm as shm_module


@pytest.fixture
def created_segments(monkeypatch):
    """Names of every shared-memory segment the parent creates during the test."""
    names = []
    original = shm_module.SharedArray.create.__func__

    def spy(cls, *args, **kwargs):
        out = original(cls, *args, **kwargs)
        names.append(out.spec.name)
        return out

    monkeypatch.setattr(shm_module.SharedArray, "create", classmethod(spy))
    return names
