"""The codec registry of the model file: which code writes and reads each kind of model.

A model file's manifest names its ``"kind"`` (the model's class name: ``"Sequential"``,
``"SparseModel"``, ``"QuantizedModel"``, ``"FixedPointModel"``). Each kind has one :class:`Codec` (encode a model to
manifest fields and arrays, decode them back, and describe its layers); an extension (QAT
observer ranges, checkpoint progress) adds fields to a model of any kind. The module that
defines a model registers its codec at import; the provider table says which module that is,
so reading a file imports only the code its kind needs, and the container code (band 1)
never imports a model module (band 2 and up).

:func:`minscale.io.save`, :func:`minscale.io.load` and :func:`minscale.io.layer_table`
dispatch through it. Providers: ``Sequential`` in :mod:`minscale.model`, ``SparseModel`` in
:mod:`minscale.prune.codec`, ``QuantizedModel`` and ``FixedPointModel`` and the ``qat``
extension in :mod:`minscale.quant.codec`, the ``checkpoint`` extension in
:mod:`minscale.train.checkpoints`.
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

from .container import ModelFileError

__all__ = ["Codec", "Extension", "register", "register_extension", "lookup",
           "lookup_extension", "registered_extensions", "kind_of"]


class Codec(NamedTuple):
    """How one kind of model is stored.

    Attributes
    ----------
    encode : callable(model) -> (dict, dict of str -> ndarray)
        Manifest fields and named arrays of `model`.
    decode : callable(manifest, arrays, path) -> model
        The inverse, given the whole verified manifest and the file's path (named in
        messages); raises :class:`minscale.io.ModelFileError` for malformed content.
    layer_table : callable(model) -> list of dict
        One row per layer (what ``minscale info`` prints).
    """

    encode: Callable
    decode: Callable
    layer_table: Callable


class Extension(NamedTuple):
    """Fields a model of any kind may carry in addition to its codec's.

    Attributes
    ----------
    encode : callable(model, manifest, arrays) -> None
        Adds its fields and arrays in place (or leaves them out).
    decode : callable(model, manifest, arrays, path) -> None
        Installs what it read on the decoded `model`.
    """

    encode: Callable
    decode: Callable


_KINDS: dict = {}
_EXTENSIONS: dict = {}

#: kind -> module that registers its codec on import (in the order error messages list them)
_PROVIDERS = {"Sequential": "minscale.model", "SparseModel": "minscale.prune.codec",
              "QuantizedModel": "minscale.quant.codec", "FixedPointModel": "minscale.quant.codec"}
#: extension -> module that registers it on import
_EXTENSION_PROVIDERS = {"qat": "minscale.quant.codec", "checkpoint": "minscale.train.checkpoints"}


def _check_name(argument, value):
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"{argument} must be an identifier string, got {value!r}")


def _check_callables(**functions):
    for argument, function in functions.items():
        if not callable(function):
            raise TypeError(f"{argument} must be callable, got {function!r}")


def register(kind, encode, decode, layer_table):
    """Register (or replace) the codec of a model kind.

    Parameters
    ----------
    kind : str
        The model's class name, as stored in the manifest's ``"kind"``.
    encode, decode, layer_table : callable
        See :class:`Codec`.

    Returns
    -------
    Codec

    Raises
    ------
    ValueError
        `kind` is not an identifier string.
    TypeError
        A function is not callable.
    """
    _check_name("kind", kind)
    _check_callables(encode=encode, decode=decode, layer_table=layer_table)
    codec = _KINDS[kind] = Codec(encode, decode, layer_table)
    return codec


def register_extension(name, encode, decode):
    """Register (or replace) a manifest extension.

    Parameters
    ----------
    name : str
    encode, decode : callable
        See :class:`Extension`.

    Returns
    -------
    Extension

    Raises
    ------
    ValueError
        `name` is not an identifier string.
    TypeError
        A function is not callable.
    """
    _check_name("name", name)
    _check_callables(encode=encode, decode=decode)
    extension = _EXTENSIONS[name] = Extension(encode, decode)
    return extension


def _known_kinds():
    return [*_PROVIDERS, *(k for k in _KINDS if k not in _PROVIDERS)]


def _expected_text(names):
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def lookup(kind, path=None):
    """The codec of `kind`, importing its provider module on first use.

    Parameters
    ----------
    kind : str
        A manifest's ``"kind"``.
    path : str or os.PathLike, optional
        The file being read, named in the error message.

    Returns
    -------
    Codec

    Raises
    ------
    minscale.io.ModelFileError
        ``"'f.npz': unknown model kind 'X'; expected 'Sequential', 'SparseModel',
        'QuantizedModel' or 'FixedPointModel'"`` (the kinds this version knows).
    """
    if kind not in _KINDS and isinstance(kind, str) and kind in _PROVIDERS:
        importlib.import_module(_PROVIDERS[kind])
    if isinstance(kind, str) and kind in _KINDS:
        return _KINDS[kind]
    where = "" if path is None else f"{path!r}: "
    raise ModelFileError(f"{where}unknown model kind {kind!r}; expected "
                         f"{_expected_text(_known_kinds())}")


def lookup_extension(name):
    """The extension `name`, importing its provider module on first use.

    Raises
    ------
    KeyError
        No such extension (a programming error, not a file error: extension names are
        chosen by the reader, not read from the file).
    """
    if name not in _EXTENSIONS and name in _EXTENSION_PROVIDERS:
        importlib.import_module(_EXTENSION_PROVIDERS[name])
    return _EXTENSIONS[name]


def registered_extensions():
    """The extensions registered so far, name -> :class:`Extension` (a copy)."""
    return dict(_EXTENSIONS)


def kind_of(model):
    """The stored kind of `model`: the first class name in its MRO that has a codec.

    Parameters
    ----------
    model : object

    Returns
    -------
    str or None
        A registered kind or one of the provider table's, else None (the caller raises the
        TypeError naming what it accepts).
    """
    for cls in type(model).__mro__:
        if cls.__name__ in _KINDS or cls.__name__ in _PROVIDERS:
            return cls.__name__
    return None
