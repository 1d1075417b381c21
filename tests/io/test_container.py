"""The model-file container: pure helpers, corrupt and foreign files, atomic writes, hostile
zip directories, error messages naming the file, non-finite parameters, stale temporaries.

Reference values are worked out by hand in the comments; the file-format properties (every
flipped bit is caught or harmless, random bytes and random manifests only ever raise
ModelFileError, a pickle is never unpickled) are checked by exhaustive loops or hypothesis.
"""
import errno
import hashlib
import json
import os
import pickle
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from io_helpers import (
    FUZZ,
    equal_state,
    make_data,
    make_model,
    rewrite,
    same_model,
    save_trained,
    trained,
    write_raw,
)

import minscale as ms
from minscale import io as msio
from minscale import prune
from minscale.cli import main
from minscale.io import ModelFileError, container
from minscale.optim import SGD


@pytest.fixture
def saved(tmp_path):
    return save_trained(tmp_path)


# ------------------------------------------------------------------------------------------
# reference values of the pure helpers


def test_expected_param_count_reference():
    # input 3 -> Dense(4) with bias: 3*4 + 4 = 16; -> Dense(2) without bias: 4*2 = 8; P = 24
    config = {"input_dim": 3, "layers": [{"units": 4, "use_bias": True},
                                         {"units": 2, "use_bias": False}]}
    assert msio.expected_param_count(config) == 24
    model = ms.Sequential([ms.Dense(4), ms.Dense(2, use_bias=False)], input_dim=3)
    assert msio.expected_param_count(model.get_config()) == model.count_params() == 24


@pytest.mark.parametrize("config, match", [
    ({"input_dim": 0, "layers": [{"units": 1}]}, "input_dim"),
    ({"input_dim": 2, "layers": []}, "layers"),
    ({"input_dim": 2, "layers": [{"units": True}]}, "units"),
    ({"input_dim": 2, "layers": [{"units": 2, "use_bias": "yes"}]}, "use_bias"),
])
def test_expected_param_count_rejects_bad_configs(config, match):
    with pytest.raises(ValueError, match=match):
        msio.expected_param_count(config)


def test_buffers_digest_restates_its_formula():
    manifest = {"b": 1, "a": [1.5, "x"], "sha256": "ignored"}
    arrays = {"w": np.array([1.0, -2.0]), "m": np.array([True, False])}
    h = hashlib.sha256()
    h.update(b"minscale-model\0")
    h.update(b'{"a":[1.5,"x"],"b":1}')
    h.update(b"m\0|b1\0[2]\0" + bytes([1, 0]))
    h.update(b"w\0<f8\0[2]\0" + np.array([1.0, -2.0]).tobytes())
    assert msio.buffers_digest(manifest, arrays) == h.hexdigest()


@given(st.integers(0, 15), st.integers(0, 7))
def test_buffers_digest_changes_with_any_bit(byte, bit):
    arr = np.arange(2, dtype=np.float64)
    flipped = arr.copy()
    flipped.view(np.uint8)[byte] ^= 1 << bit
    assert msio.buffers_digest({}, {"w": arr}) != msio.buffers_digest({}, {"w": flipped})
    # the same bytes under another name or shape give another digest too
    assert msio.buffers_digest({}, {"w": arr}) != msio.buffers_digest({}, {"v": arr})
    assert msio.buffers_digest({}, {"w": arr}) != \
        msio.buffers_digest({}, {"w": arr.reshape(1, 2)})


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
arrays_st = st.sampled_from(["bool", "int8", "int32", "uint16", "float32", "float64"]).flatmap(
    lambda dt: st.integers(0, 4).map(lambda n: (np.arange(n) % 3).astype(dt)))
state_st = st.recursive(
    st.one_of(json_leaf, arrays_st),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids, kids),
                           st.dictionaries(st.text("abc_", min_size=1, max_size=4), kids,
                                           max_size=3)),
    max_leaves=10)


@settings(deadline=None, max_examples=80)
@given(state_st)
def test_state_encoding_round_trips_through_strict_json(value):
    arrays = {}
    encoded = msio.encode_state(value, arrays)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: no NaN literals
    assert equal_state(msio.decode_state(json.loads(text), arrays), value)


@pytest.mark.parametrize("state, match", [
    ({"s": {1, 2}}, r"model.state\['s'\] holds a set"),
    ({1: "x"}, "str keys"),
    ({"__array__": 1}, "reserved"),
    ({"a": [np.array(["x"])]}, r"model.state\['a'\]\[0\] is an array of dtype <U1"),
])
def test_state_that_cannot_be_stored_is_refused_naming_where(tmp_path, state, match):
    model = make_model()
    model.state.update(state)
    with pytest.raises(TypeError, match=match):
        ms.save(model, tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------
# corrupt and foreign files: always ModelFileError, never a pickle


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("minscale.io tried to unpickle")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.mark.parametrize("cut", [0, 1, 4, 30, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, cut, no_unpickling):
    _, path, _, _ = saved
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut % len(data) if cut else 0
    (tmp_path / "cut.npz").write_bytes(data[:n])
    with pytest.raises(ModelFileError):
        ms.load(tmp_path / "cut.npz")


def test_every_flipped_bit_is_caught_or_harmless(saved, tmp_path, no_unpickling):
    # One bit flipped in every other byte of the file (bit i/2 % 8 of byte i). Each copy either
    # fails with ModelFileError or loads the very same model: the only bytes zipfile does not
    # check are timestamps and similar metadata of the zip headers.
    model, path, X, _ = saved
    data = bytearray(path.read_bytes())
    payload = set()  # offsets of the members' stored bytes (.npy headers and array data)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            at = info.header_offset
            start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") \
                + int.from_bytes(data[at + 28:at + 30], "little")
            payload.update(range(start, start + info.compress_size))
    target = tmp_path / "flip.npz"
    harmless = []
    tried = range(0, len(data), 2)  # every other byte keeps the test at a few seconds
    for i in tried:
        data[i] ^= 1 << (i // 2 % 8)
        target.write_bytes(data)
        data[i] ^= 1 << (i // 2 % 8)
        try:
            loaded = ms.load(target)
        except ModelFileError:
            continue
        same_model(model, loaded)
        harmless.append(i)
    assert len(payload) > 0.8 * len(data)
    assert not payload.intersection(harmless)  # every flip in a member is caught
    assert len(harmless) < 0.15 * len(tried)


def test_flipped_bit_in_the_parameters_names_the_damage(saved, tmp_path):
    model, path, _, _ = saved
    data = bytearray(path.read_bytes())
    at = data.index(model.params.tobytes())  # stored uncompressed, so found verbatim
    data[at + 3] ^= 0x10
    (tmp_path / "flip.npz").write_bytes(data)
    with pytest.raises(ModelFileError, match="CRC|damaged"):
        ms.load(tmp_path / "flip.npz")


def test_altered_buffer_with_valid_zip_fails_the_sha256(saved, tmp_path):
    _, path, _, _ = saved

    def nudge(arrays):
        arrays["params"][0] = np.nextafter(arrays["params"][0], np.inf)
    rewrite(path, tmp_path / "alt.npz", edit_arrays=nudge, rehash=False)
    with pytest.raises(ModelFileError, match="SHA-256"):
        ms.load(tmp_path / "alt.npz")


def test_manifest_with_wrong_shapes(saved, tmp_path):
    model, path, _, _ = saved
    P = model.count_params()

    def claim(manifest):
        manifest["arrays"]["params"]["shape"] = [P + 1]
    # the manifest disagrees with the stored array (even with a matching digest)
    rewrite(path, tmp_path / "a.npz", edit_manifest=claim)
    with pytest.raises(ModelFileError, match=rf"shape \({P},\), the manifest says \({P + 1},\)"):
        ms.load(tmp_path / "a.npz")

    def grow(arrays):
        arrays["params"] = np.zeros(P + 1)
    # manifest and array agree with each other but not with the architecture
    rewrite(path, tmp_path / "b.npz", edit_arrays=grow, edit_manifest=claim)
    with pytest.raises(ModelFileError, match=rf"architecture needs \({P},\)"):
        ms.load(tmp_path / "b.npz")

    def retype(manifest):
        manifest["arrays"]["mask"]["dtype"] = "<f8"
    rewrite(path, tmp_path / "c.npz", edit_manifest=retype)
    with pytest.raises(ModelFileError, match="dtype"):
        ms.load(tmp_path / "c.npz")


@pytest.mark.parametrize("field, value, match", [
    ("format_version", 2, "format version 2; this minscale reads version 1"),
    ("format_version", "1", "format version '1'"),
    ("format", "keras", "format is 'keras'"),
    ("kind", "Transformer", "unknown model kind 'Transformer'"),
])
def test_unknown_format_version_name_or_kind(saved, tmp_path, field, value, match):
    _, path, _, _ = saved
    rewrite(path, tmp_path / "v.npz", edit_manifest=lambda m: m.__setitem__(field, value))
    with pytest.raises(ModelFileError, match=match):
        ms.load(tmp_path / "v.npz")


def test_npz_with_a_pickled_object_array_is_refused_unread(saved, tmp_path, no_unpickling):
    model, path, _, _ = saved
    manifest, arrays = container.read_container(path)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))
    arrays["params"] = np.array([Boom()], dtype=object)
    manifest["arrays"]["params"] = {"shape": [1], "dtype": "|O"}
    write_raw(tmp_path / "evil.npz", manifest, arrays)
    with pytest.raises(ModelFileError, match="never loads pickles|object"):
        ms.load(tmp_path / "evil.npz")
    # even when the manifest keeps claiming a float array
    manifest["arrays"]["params"] = {"shape": [1], "dtype": "<f8"}
    write_raw(tmp_path / "evil2.npz", manifest, arrays)
    with pytest.raises(ModelFileError, match="object array"):
        ms.load(tmp_path / "evil2.npz")
    assert not os.path.exists("pwned.txt")


@pytest.mark.parametrize("make, match", [
    (lambda p, m: p.write_bytes(pickle.dumps({"params": m.params})), "pickle"),
    (lambda p, m: np.save(p.with_suffix(".npy"), m.params) or
        os.replace(p.with_suffix(".npy"), p), "single .npy array"),
    (lambda p, m: p.write_text("W = [1, 2, 3]\n"), "not an .npz"),
    (lambda p, m: p.write_bytes(b""), "not an .npz"),
    (lambda p, m: np.savez(p, params=m.params, mask=m.mask), "no manifest"),
    (lambda p, m: write_raw(p, {}, {"params": m.params}, compression=zipfile.ZIP_DEFLATED),
     "compressed"),
    (lambda p, m: write_raw(p, {}, {}, manifest_bytes=b'{"format": NaN}'), "NaN"),
    (lambda p, m: write_raw(p, {}, {}, manifest_bytes=b"\xff\xfe"), "UnicodeDecodeError"),
    (lambda p, m: write_raw(p, [1, 2], {}), "must be a JSON object"),
])
def test_foreign_files_are_refused(tmp_path, make, match, no_unpickling):
    path = tmp_path / "foreign.npz"
    make(path, make_model())
    with pytest.raises(ModelFileError, match=match):
        ms.load(path)


def test_path_problems_raise_the_usual_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ms.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        ms.load(tmp_path)
    with pytest.raises(TypeError, match="path must be a str"):
        ms.load(42)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]))
def test_fuzz_random_bytes_only_raise_model_file_error(tmp_path, data, prefix):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(prefix + data)
    with pytest.raises(ModelFileError, match="fuzz.npz"):
        ms.load(path)


json_values = st.recursive(
    json_leaf.filter(lambda v: not (isinstance(v, float) and (v != v or abs(v) == np.inf))),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=6), kids, max_size=3)),
    max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """(manifest, arrays) of a checkpoint of a pruned QAT run, a sparse and a quantized model."""
    from minscale import quant
    folder = tmp_path_factory.mktemp("valid")
    model = make_model(optimizer=SGD(0.05, momentum=0.9))
    prune.prune(model, 0.3)
    X, y = make_data()
    model.fit(X, y, epochs=2, batch_size=4, seed=3, checkpoint=folder / "ck.npz",
              checkpoint_every=5, quantization="int8")
    ms.save(prune.to_sparse(make_model()), folder / "sparse.npz")
    ms.save(quant.quantize_model(make_model(), "int8", "int8", calibration_data=X),
            folder / "q.npz")
    return [container.read_container(folder / name) for name in ("ck.npz", "sparse.npz", "q.npz")]


def _load_all_ways(path):
    for reader in (ms.load, msio.read_checkpoint, msio.read_manifest):
        try:
            reader(path)
        except ModelFileError as exc:
            assert str(path) in str(exc), exc  # every message names the file


@FUZZ
@given(data=st.data(), which=st.integers(0, 2), value=json_values,
       mode=st.sampled_from(["replace", "delete", "whole"]))
def test_fuzz_random_manifests_only_raise_model_file_error(tmp_path, valid_files, data, which,
                                                           value, mode):
    # Mutate one field anywhere in a valid manifest (or replace the manifest), re-hash so the
    # digest check passes, and load: the result is a model or ModelFileError.
    manifest, arrays = valid_files[which]
    manifest = json.loads(json.dumps(manifest))
    if mode == "whole":
        manifest = value
    else:
        paths = [p for p in _paths(manifest) if p]
        where = data.draw(st.sampled_from(paths))
        parent = manifest
        for key in where[:-1]:
            parent = parent[key]
        if mode == "delete":
            del parent[where[-1]]
        else:
            parent[where[-1]] = value
    if isinstance(manifest, dict):
        manifest["sha256"] = msio.buffers_digest(manifest, arrays)
    write_raw(tmp_path / "m.npz", manifest, arrays)
    _load_all_ways(tmp_path / "m.npz")


@FUZZ
@given(data=st.data(), which=st.integers(0, 2), shape=st.lists(st.integers(0, 40), max_size=2),
       dtype=st.sampled_from(["<f8", "<f4", "|b1", "<i8", "<i4", "|i1", "|u1"]))
def test_fuzz_random_arrays_only_raise_model_file_error(tmp_path, valid_files, data, which,
                                                        shape, dtype):
    # Replace one array by a zero array of random shape and dtype, manifest and digest
    # following it: only the checks against the architecture can refuse it.
    manifest, arrays = valid_files[which]
    name = data.draw(st.sampled_from(sorted(arrays)))
    manifest = json.loads(json.dumps(manifest))
    arrays = dict(arrays)
    arrays[name] = np.zeros(shape, dtype=dtype)
    manifest["arrays"][name] = {"shape": shape, "dtype": dtype}
    manifest["sha256"] = msio.buffers_digest(manifest, arrays)
    write_raw(tmp_path / "m.npz", manifest, arrays)
    _load_all_ways(tmp_path / "m.npz")


# ------------------------------------------------------------------------------------------
# atomic writes


def test_failure_midway_leaves_the_old_file_and_no_temporary(saved, tmp_path, monkeypatch):
    model, path, _, _ = saved
    before = path.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def failing(fp, array, *args, **kwargs):
        calls.append(array.shape)
        if len(calls) == 3:
            fp.write(b"\0" * 7)  # part of a member is already out when the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fp, array, *args, **kwargs)
    monkeypatch.setattr(np.lib.format, "write_array", failing)
    model.params[0] += 1.0
    with pytest.raises(OSError, match="No space left") as info:
        ms.save(model, path)
    assert any("previous file" in note for note in info.value.__notes__)
    assert len(calls) == 3
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_interrupt_midway_leaves_the_old_file(saved, tmp_path, monkeypatch):
    model, path, _, _ = saved
    before = path.read_bytes()

    def interrupted(f):
        f.write(b"half a file")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        msio.atomic_write(path, interrupted)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_atomic_write_replaces_and_keeps_the_mode(tmp_path):
    path = tmp_path / "f.bin"
    msio.atomic_write(path, lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one" and (path.stat().st_mode & 0o777) == 0o644
    os.chmod(path, 0o600)
    msio.atomic_write(str(path), lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two" and (path.stat().st_mode & 0o777) == 0o600
    assert os.listdir(tmp_path) == ["f.bin"]


def test_saving_into_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*nope.* does not exist"):
        ms.save(make_model(), tmp_path / "nope" / "m.npz")
    assert os.listdir(tmp_path) == []
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        ms.save(make_model(), tmp_path)


def test_saving_into_a_read_only_folder_simulated(saved, tmp_path, monkeypatch):
    # root ignores permission bits, so the refusal of the OS is simulated at mkstemp
    model, path, _, _ = saved
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"cannot write .*model.npz.*Permission denied"):
        ms.save(model, path)
    assert path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_into_a_read_only_folder(saved, tmp_path):
    model, path, _, _ = saved
    before = path.read_bytes()
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write"):
            ms.save(model, path)
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == before


def test_saving_into_a_read_only_system_folder():
    # /sys refuses new files even to root on Linux
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    try:
        with open("/sys/kernel/minscale-probe", "wb"):
            pass
    except OSError:
        pass
    else:
        pytest.skip("/sys/kernel is writable here")
    with pytest.raises(OSError, match="cannot write '/sys/kernel/m.npz'"):
        ms.save(make_model(), "/sys/kernel/m.npz")


# ------------------------------------------------------------------------------------------
# hostile files: the zip directory is checked before any member is read


def test_overlapping_members_are_refused_before_any_is_read(tmp_path, monkeypatch):
    from hostile_files import overlapping_model
    path = overlapping_model(tmp_path / "overlap.npz", n_members=5, blob_bytes=4096)
    with zipfile.ZipFile(path) as zf:  # every member is a valid stored array on its own...
        claimed = sum(len(zf.read(name)) for name in zf.namelist())
    assert claimed > 4 * path.stat().st_size  # ...and together they claim the blob 5 times

    def no_reading(*args):
        raise AssertionError("a member was read before the directory was checked")
    monkeypatch.setattr(container, "_read_member", no_reading)
    with pytest.raises(ModelFileError, match=r"overlap.npz'?: members 'a0.npy' and 'a1.npy' "
                                             r"overlap"):
        ms.load(path)


def test_directory_that_contradicts_the_local_headers_is_refused(saved, tmp_path):
    _, path, _, _ = saved
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")  # the first central entry: manifest.npy
    second = data.index(b"PK\x03\x04", 4)  # the second member's local header
    data[at + 42:at + 46] = second.to_bytes(4, "little")
    (tmp_path / "moved.npz").write_bytes(data)
    with pytest.raises(ModelFileError, match=r"moved.npz'?: member 'manifest.npy': its local "
                                             r"header names"):
        ms.load(tmp_path / "moved.npz")


def test_peak_memory_of_info_on_overlapping_members(tmp_path):
    # 100 members share 3 MiB: read one by one they would claim 300 MiB
    from hostile_files import overlapping_model, peak_rss_mb
    path = overlapping_model(tmp_path / "overlap.npz", n_members=100, blob_bytes=3 * 2**20)
    assert path.stat().st_size < 4 * 2**20
    code, err, peak_mb = peak_rss_mb(["info", path])
    assert code == 2 and err.count("\n") == 1 and "overlap" in err, err
    assert peak_mb < 200, peak_mb


# ------------------------------------------------------------------------------------------
# every ModelFileError names the file


def _compressed(path, out):
    manifest, arrays = container.read_container(path)
    write_raw(out, manifest, arrays, compression=zipfile.ZIP_DEFLATED)


def _fortran(path, out):
    manifest, arrays = container.read_container(path)
    arrays["params"] = np.asfortranarray(arrays["params"].reshape(5, -1))
    manifest["arrays"]["params"]["shape"] = list(arrays["params"].shape)
    write_raw(out, manifest, arrays)


def _edit(edit):
    def rewrite_with(path, out):
        rewrite(path, out, edit_manifest=edit)
    return rewrite_with


@pytest.mark.parametrize("damage, words", [
    (_compressed, "is compressed"),
    (_fortran, "Fortran order"),
    (_edit(lambda m: m["arrays"]["params"].update(shape=[-1])), "the shape [-1]"),
    (_edit(lambda m: m.pop("compile")), "misses the field 'compile'"),
    (_edit(lambda m: m["compile"].pop("loss")), "misses the field 'loss'"),
    (_edit(lambda m: m.update(state={"x": {"__array__": "state/9"}})), "refers to array"),
])
def test_every_model_file_error_names_the_file(saved, tmp_path, damage, words):
    _, path, _, _ = saved
    out = tmp_path / "named-damaged.npz"
    damage(path, out)
    with pytest.raises(ModelFileError) as info:
        ms.load(out)
    assert words in str(info.value) and "named-damaged.npz" in str(info.value), info.value
    for read in (msio.read_manifest, msio.read_checkpoint):  # fail at the same or a later step
        try:
            read(out)
        except ModelFileError as exc:
            assert "named-damaged.npz" in str(exc), exc


# ------------------------------------------------------------------------------------------
# non-finite parameters


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters_are_refused_at_load(tmp_path, value):
    model, _, _ = trained()
    model.params[7] = value
    ms.save(model, tmp_path / "bad.npz")
    with pytest.raises(ModelFileError, match=rf"bad.npz'?: array 'params' holds {value!r} at "
                                             r"index 7 \(1 non-finite values\)"):
        ms.load(tmp_path / "bad.npz")
    model.params[7] = 0.0
    model.params[-1] = value
    ms.save(model, tmp_path / "ck.npz")
    with pytest.raises(ModelFileError, match="non-finite"):
        msio.load_with_manifest(tmp_path / "ck.npz")


def test_non_finite_sparse_and_quantized_parameters_are_refused(tmp_path):
    from minscale import quant
    model, X, _ = trained()
    sparse = prune.to_sparse(model)
    sparse.layers[1].W.data[2] = np.nan
    ms.save(sparse, tmp_path / "sparse.npz")
    with pytest.raises(ModelFileError, match=r"sparse.npz'?: array 'layers/1/data' holds nan "
                                             r"at index 2"):
        ms.load(tmp_path / "sparse.npz")
    ms.save(quant.quantize_model(model, weights="int8", activations=None), tmp_path / "q.npz")

    def infinite_scale(arrays):
        arrays["layers/0/weight_scale"][1] = np.inf
    rewrite(tmp_path / "q.npz", tmp_path / "qbad.npz", edit_arrays=infinite_scale)
    with pytest.raises(ModelFileError, match=r"'layers/0/weight_scale' holds inf at index 1"):
        ms.load(tmp_path / "qbad.npz")


@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_cli_on_a_model_with_nan_weights_is_one_line_and_exit_2(tmp_path, capsys, command):
    model = ms.Sequential([ms.Dense(1)], input_dim=10, seed=0)
    model.compile()
    model.params[:] = np.nan
    ms.save(model, tmp_path / "nan.npz")
    assert main([command, str(tmp_path / "nan.npz")]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "non-finite" in err and "nan.npz" in err, err
    assert "loss" not in out


# ------------------------------------------------------------------------------------------
# temporary files left by a killed save


def _dead_pid():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_save_leaves_a_temporary_that_a_later_save_removes(tmp_path):
    import subprocess
    import sys
    script = ("import os, signal, sys\n"
              "import minscale.io as msio\n"
              "def writer(f):\n"
              "    f.write(b'half a file')\n"
              "    f.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "msio.atomic_write(sys.argv[1], writer)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ms.__file__)))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.npz")], env=env)
    assert proc.returncode == -9
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(f".m.npz.{_pid_of(left[0])}."), left
    ms.save(make_model(), tmp_path / "m.npz")  # too fresh: its writer might still be writing
    assert left[0] in os.listdir(tmp_path)
    old = os.stat(tmp_path / left[0]).st_mtime - msio.STALE_TEMP_SECONDS - 1
    os.utime(tmp_path / left[0], (old, old))
    ms.save(make_model(), tmp_path / "other.npz")  # any save in the folder cleans up
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "other.npz"]


def _pid_of(name):
    return name.split(".")[-3]


def test_only_stale_temporaries_of_our_own_pattern_are_removed(tmp_path):
    now = 1_000_000_000.0
    dead, alive = _dead_pid(), os.getppid()
    old, fresh, ancient = now - 601, now - 10, now - 86401
    files = {
        f".m.npz.{dead}.abcd_123.tmp": old,           # killed writer, unchanged 10 min: gone
        f".x.csv.{dead}.zzzzzzzz.tmp": old,           # any target in the folder: gone
        f".m.npz.{dead}.abcd1234.tmp": fresh,         # too fresh: kept
        f".m.npz.{alive}.abcd1234.tmp": ancient,      # its writer runs: kept, however old
        f".m.npz.{os.getpid()}.abcd1234.tmp": old,    # ours: kept
        ".m.npz.abcdefgh.tmp": ancient,               # old-style name of the target: gone
        ".m.npz.abcdefgh.tmp.keep": ancient,          # not our pattern
        ".q.npz.abcdefgh.tmp": ancient,               # old-style name of another file: kept
        f".m.npz.{dead}.ABCDEFGH.tmp": old,           # not mkstemp's characters: kept
        ".m.npz.oldstyle.tmp": now - 3600,            # old-style, younger than a day: kept
    }
    for name, mtime in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    os.symlink(tmp_path / ".m.npz.abcdefgh.tmp.keep", tmp_path / f".l.npz.{dead}.abcdefgh.tmp")
    os.utime(tmp_path / f".l.npz.{dead}.abcdefgh.tmp", (old, old), follow_symlinks=False)
    removed = msio.remove_stale_temporaries(str(tmp_path), "m.npz", now=now)
    assert sorted(removed) == sorted([f".m.npz.{dead}.abcd_123.tmp",
                                      f".x.csv.{dead}.zzzzzzzz.tmp", ".m.npz.abcdefgh.tmp"])
    assert sorted(os.listdir(tmp_path)) == sorted(
        set(files) - set(removed) | {f".l.npz.{dead}.abcdefgh.tmp"})


def test_the_longest_name_the_output_check_accepts_saves_atomically(tmp_path, monkeypatch):
    # the output check leaves data.TEMP_NAME_EXTRA bytes of NAME_MAX for the temporary file
    # ".NAME.PID.XXXXXXXX.tmp"; with the largest pid Linux can give (7 digits) the longest
    # accepted name must still save, and one byte more must be refused up front
    from minscale.data import TEMP_NAME_EXTRA, check_output_path

    monkeypatch.setattr(os, "getpid", lambda: 4194304)
    longest = "m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - TEMP_NAME_EXTRA - 4) + ".npz"
    path = tmp_path / longest
    check_output_path(str(path), "--save")
    model = ms.Sequential([ms.Dense(2)], input_dim=3, seed=0)
    ms.save(model, path)
    assert ms.load(path).params.tobytes() == model.params.tobytes()
    with pytest.raises(ValueError, match="--save .*the file name is"):
        check_output_path(str(tmp_path / ("m" + longest)), "--save")
