"""minscale.io.codecs: the registry API (empty until the model modules register)."""
import pytest

from minscale import io as msio
from minscale.io import codecs


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(codecs, "_KINDS", {})
    monkeypatch.setattr(codecs, "_EXTENSIONS", {})
    monkeypatch.setattr(codecs, "_PROVIDERS", dict(codecs._PROVIDERS))
    monkeypatch.setattr(codecs, "_EXTENSION_PROVIDERS", {})
    return codecs


class Base:
    pass


class Child(Base):
    pass


def test_register_lookup_and_kind_of(registry):
    enc, dec, table = (lambda m: ({}, {})), (lambda f, a: Base()), (lambda m: [])
    codec = registry.register("Base", enc, dec, table)
    assert registry.lookup("Base") is codec
    assert codec == (enc, dec, table)
    assert registry.kind_of(Child()) == "Base"       # found through the MRO
    assert registry.kind_of(object()) is None
    ext = registry.register_extension("extra", lambda m, man, a: None, lambda m, man, a, p: None)
    assert registry.lookup_extension("extra") is ext
    assert registry.registered_extensions() == {"extra": ext}


def test_unknown_kind_names_the_file_and_the_known_kinds(registry):
    registry._PROVIDERS.pop("Sequential")  # no provider import for this check
    registry.register("Sequential", print, print, print)
    with pytest.raises(msio.ModelFileError,
                       match=r"^'m.npz': unknown model kind 'Nope'; expected 'SparseModel', "
                             r"'QuantizedModel' or 'Sequential'$"):
        registry.lookup("Nope", "m.npz")
    with pytest.raises(msio.ModelFileError, match=r"^unknown model kind 3;"):
        registry.lookup(3)


def test_a_provider_is_imported_on_first_lookup(registry):
    # the providers do not register yet, so the import happens and the kind stays unknown
    registry._PROVIDERS["Fake"] = "minscale.sizes"
    with pytest.raises(msio.ModelFileError, match=r"unknown model kind 'Fake'"):
        registry.lookup("Fake")


def test_bad_arguments(registry):
    with pytest.raises(ValueError, match=r"^kind must be an identifier string, got 'a b'$"):
        registry.register("a b", print, print, print)
    with pytest.raises(TypeError, match=r"^decode must be callable, got 1$"):
        registry.register("K", print, 1, print)
    with pytest.raises(KeyError):
        registry.lookup_extension("missing")
