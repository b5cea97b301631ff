"""Tests of actsteer.core.formats: bit-exact round trips, interop with repeng 0.4 and llama.cpp
control-vector GGUF, one test per validation rule, and property tests that garbled or hostile
files only ever raise VectorFileError."""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actsteer.core.formats import read_gguf, read_native, write_gguf, write_native
from actsteer.errors import LayerError, NonFiniteError, VectorFileError, VectorShapeError

HIDDEN = 24


def _directions(layers=(1, 4, 7, 12), dtype=torch.float32, seed=0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(HIDDEN, generator=gen) * 3).to(dtype) for k in layers}


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(
        a.view(torch.int32), b.view(torch.int32)
    )


def _st_file(path: Path, header: dict, body: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _st_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    return path


def _tagged(**extra: str) -> dict[str, str]:
    return {"format": "actsteer.vector", "format_version": "1", "meta": "{}", **extra}


def _gguf_file(path: Path, tensors: dict, arch: str = "controlvector", kv=None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    for add in kv or ():
        add(writer)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _vec(n: int = HIDDEN, dtype=np.float32) -> np.ndarray:
    return np.linspace(-1, 1, n).astype(dtype)


# ---------------------------------------------------------------- native round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_native_round_trip_is_bit_exact(tmp_path, dtype):
    dirs = _directions(layers=(0, 3, 5, 11, 30), dtype=dtype)
    dirs[3][0] = 1e-30 if dtype != torch.float16 else 6e-8  # subnormal-ish values survive
    write_native(tmp_path / "v.safetensors", dirs, {})
    loaded, _ = read_native(tmp_path / "v.safetensors")
    assert list(loaded) == sorted(dirs)
    for layer, tensor in dirs.items():
        assert _bit_equal(loaded[layer], tensor.to(torch.float32))


def test_native_meta_round_trip_and_header_layout(tmp_path):
    meta = {"model": {"name": "smol", "layers": 30}, "norms": [1.5, 2.25], "note": "ünï", "x": None}
    path = tmp_path / "v.safetensors"
    write_native(path, _directions(), meta)
    assert read_native(path)[1] == meta
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {
            "format": "actsteer.vector",
            "format_version": "1",
            "meta": json.dumps(meta, sort_keys=True),
        }
        names = sorted(handle.keys())
        assert names == ["direction.1", "direction.12", "direction.4", "direction.7"]
        assert all(handle.get_tensor(name).dtype == torch.float32 for name in names)


def test_native_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    write_native(path, _directions(seed=1), {"v": 1})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(VectorFileError, match="disk on fire"):
        write_native(path, _directions(seed=2), {"v": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["v.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("meta", "match"), [({"o": object()}, "JSON-serialisable"), ({"n": float("nan")}, "JSON")]
)
def test_native_write_rejects_bad_meta(tmp_path, meta, match):
    with pytest.raises(VectorFileError, match=match):
        write_native(tmp_path / "v.safetensors", _directions(), meta)
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize(
    ("directions", "error", "match"),
    [
        ({}, VectorShapeError, "at least one direction"),
        ({-1: torch.ones(4)}, LayerError, "non-negative"),
        ({"3": torch.ones(4)}, LayerError, "non-negative"),
        ({True: torch.ones(4)}, LayerError, "non-negative"),
        ({1: torch.ones(2, 2, 2)}, VectorShapeError, "1-D"),
        ({1: torch.ones(4, dtype=torch.int64)}, VectorShapeError, "dtype"),
        ({1: torch.ones(4), 2: torch.ones(5)}, VectorShapeError, "same hidden size"),
        ({1: torch.tensor([1.0, float("nan")])}, NonFiniteError, "NaN"),
    ],
)
@pytest.mark.parametrize("writer", ["native", "gguf"])
def test_writers_reject_bad_directions(tmp_path, directions, error, match, writer):
    with pytest.raises(error, match=match):
        if writer == "native":
            write_native(tmp_path / "v", directions, {})
        else:
            write_gguf(tmp_path / "v", directions, "llama")
    assert not (tmp_path / "v").exists()


# ---------------------------------------------------------------- native validation


def test_per_position_actadd_directions_round_trip_natively_and_never_to_gguf(tmp_path):
    """A positional ActAdd vector ``(positions, hidden)`` saves and loads as it was (so a
    server can name it); GGUF control vectors are 1-D, so the GGUF writer refuses it."""
    directions = {1: torch.randn(3, 4), 2: torch.randn(4)}
    write_native(tmp_path / "v.safetensors", directions, {"method": "actadd"})
    back, meta = read_native(tmp_path / "v.safetensors")
    assert meta == {"method": "actadd"}
    assert all(torch.equal(back[k], directions[k]) for k in directions)
    with pytest.raises(VectorShapeError, match="must be 1-D and non-empty"):
        write_gguf(tmp_path / "v.gguf", directions, "llama")


def test_read_native_accepts_untagged_direction_file(tmp_path):
    path = _st_tensors(tmp_path / "f.safetensors", {"direction.2": torch.ones(4)})
    directions, meta = read_native(path)
    assert meta == {} and torch.equal(directions[2], torch.ones(4))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


_OK = torch.ones(4)
_NATIVE_BAD = {
    "missing": ("no such file", lambda d: d / "missing.safetensors"),
    "directory": ("not a regular file", lambda d: d),
    "too-short": ("too short", lambda d: _write(d / "f", b"abc")),
    "header-longer-than-file": (
        "declared header length",
        lambda d: _write(d / "f", struct.pack("<Q", 10**12) + b"{}"),
    ),
    "header-not-json": ("not valid JSON", lambda d: _write(d / "f", struct.pack("<Q", 3) + b"{x]")),
    "header-not-object": ("not a JSON object", lambda d: _st_file(d / "f", [1, 2])),
    "metadata-not-dict": ("__metadata__", lambda d: _st_file(d / "f", {"__metadata__": [1]})),
    "metadata-not-strings": (
        "__metadata__",
        lambda d: _st_file(d / "f", {"__metadata__": {"format": 1}}),
    ),
    "wrong-tag": (
        "not an actsteer vector",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK}, {"format": "pt"}),
    ),
    "untagged-foreign": (
        "not an actsteer vector",
        lambda d: _st_tensors(d / "f", {"model.weight": _OK}),
    ),
    "format-version": (
        "unsupported format_version '2': this actsteer reads format_version '1'",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK}, _tagged(format_version="2")),
    ),
    **{
        f"name-{name}": (
            "direction.<layer>",
            lambda d, name=name: _st_tensors(d / "f", {name: _OK}, _tagged()),
        )
        for name in ["direction.-1", "direction.x", "weight", "direction.1.0", "direction."]
    },
    "three-dims": (
        "must be 1-D, or 2-D",
        lambda d: _st_tensors(d / "f", {"direction.1": torch.ones(2, 2, 2)}, _tagged()),
    ),
    "too-many-positions": (
        "1-4096 positions",
        lambda d: _st_tensors(d / "f", {"direction.1": torch.ones(4097, 2)}, _tagged()),
    ),
    "positions-hidden-differ": (
        "same hidden size",
        lambda d: _st_tensors(
            d / "f", {"direction.1": torch.ones(3, 4), "direction.2": torch.ones(5)}, _tagged()
        ),
    ),
    "int-dtype": (
        "dtype 'I64'",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK.long()}, _tagged()),
    ),
    "lengths-differ": (
        "same hidden size",
        lambda d: _st_tensors(
            d / "f", {"direction.1": _OK, "direction.2": torch.ones(5)}, _tagged()
        ),
    ),
    "nan": (
        "NaN or infinity",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK * float("nan")}, _tagged()),
    ),
    "inf": (
        "NaN or infinity",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK * float("inf")}, _tagged()),
    ),
    "no-tensors": ("no direction tensors", lambda d: _st_tensors(d / "f", {}, _tagged())),
    "meta-not-json": (
        "meta is not valid JSON",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK}, _tagged(meta="{oops")),
    ),
    "meta-not-object": (
        "not a JSON object",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK}, _tagged(meta="[1]")),
    ),
    "offsets-past-end": (
        "run past the end",
        lambda d: _st_file(
            d / "f", {"direction.1": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"x"
        ),
    ),
    "duplicate-layer": (
        "two tensors name layer 1",
        lambda d: _st_tensors(d / "f", {"direction.1": _OK, "direction.01": _OK * 2}, _tagged()),
    ),
}


@pytest.mark.parametrize(("match", "build"), _NATIVE_BAD.values(), ids=_NATIVE_BAD.keys())
def test_read_native_rejects_bad_files(tmp_path, match, build):
    path = build(tmp_path)
    with pytest.raises(VectorFileError) as excinfo:
        read_native(path)
    assert match in str(excinfo.value)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("reader", [read_native, read_gguf])
def test_readers_refuse_files_over_2_gib_before_reading(tmp_path, reader):
    path = tmp_path / "huge"
    with open(path, "wb") as handle:
        handle.truncate(2 * 1024**3 + 1)  # sparse: costs no disk
    with pytest.raises(VectorFileError, match="2 GiB"):
        reader(path)


# ---------------------------------------------------------------- GGUF round trips and interop


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gguf_round_trip_is_bit_exact(tmp_path, dtype):
    dirs = _directions(layers=(1, 2, 9, 17, 29), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer 0, so no warning
        write_gguf(tmp_path / "v.gguf", dirs, "llama")
    loaded, meta = read_gguf(tmp_path / "v.gguf")
    assert meta == {"source_format": "gguf", "model_hint": "llama"}
    assert list(loaded) == sorted(dirs)
    for layer, tensor in dirs.items():
        assert _bit_equal(loaded[layer], tensor.to(torch.float32))


def test_write_gguf_has_exactly_the_fields_llama_cpp_and_repeng_read(tmp_path):
    dirs = _directions(layers=(3, 1, 10))
    write_gguf(tmp_path / "v.gguf", dirs, "qwen2")
    reader = gguf.GGUFReader(tmp_path / "v.gguf")
    arch = reader.get_field("general.architecture")
    assert arch.types == [gguf.GGUFValueType.STRING] and arch.contents() == "controlvector"
    hint = reader.get_field("controlvector.model_hint")
    assert hint.types == [gguf.GGUFValueType.STRING] and hint.contents() == "qwen2"
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == 3
    user_keys = {k for k in reader.fields if not k.startswith("GGUF.")}
    assert user_keys == {
        "general.architecture",
        "controlvector.model_hint",
        "controlvector.layer_count",
    }
    # llama.cpp common_control_vector_load_one: direction.<int > 0>, F32, 1-D, equal sizes
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        assert prefix == "direction" and int(index) > 0
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert len(tensor.shape) == 1 and tensor.n_elements == HIDDEN
    # repeng import_gguf: model_hint from parts[-1], directions from tensor.data
    assert str(bytes(hint.parts[-1]), encoding="utf-8") == "qwen2"
    repeng_dirs = {int(t.name.split(".")[1]): t.data for t in reader.tensors}
    assert repeng_dirs.keys() == dirs.keys()
    for layer, array in repeng_dirs.items():
        assert np.array_equal(array, dirs[layer].numpy())


def test_read_gguf_loads_repeng_export(tmp_path):
    directions = {5: _vec(), 2: -_vec(), 9: _vec() * 2}  # repeng: numpy float32, dict order
    path = _gguf_file(
        tmp_path / "repeng.gguf",
        {f"direction.{k}": v for k, v in directions.items()},
        kv=[
            lambda w: w.add_string("controlvector.model_hint", "mistral"),
            lambda w: w.add_uint32("controlvector.layer_count", len(directions)),
        ],
    )
    loaded, meta = read_gguf(path)
    assert meta == {"source_format": "gguf", "model_hint": "mistral"}
    assert list(loaded) == [2, 5, 9]
    for layer, array in directions.items():
        assert np.array_equal(loaded[layer].numpy(), array)


@pytest.mark.parametrize("with_hint", [True, False])
def test_read_gguf_loads_cvector_generator_output(tmp_path, with_hint):
    kv = [lambda w: w.add_int32("controlvector.layer_count", 3)]
    if with_hint:
        kv.append(lambda w: w.add_string("controlvector.model_hint", "llama"))
    path = _gguf_file(tmp_path / "cv.gguf", {f"direction.{i}": _vec() for i in (1, 2, 3)}, kv=kv)
    loaded, meta = read_gguf(path)
    assert sorted(loaded) == [1, 2, 3]
    assert meta == (
        {"source_format": "gguf", "model_hint": "llama"} if with_hint else {"source_format": "gguf"}
    )


def test_writers_accept_repeng_style_numpy_directions(tmp_path):
    directions = {np.int64(3): _vec(), 8: -_vec()}  # repeng keeps dict[int, np.ndarray]
    write_gguf(tmp_path / "v.gguf", directions, "llama")
    write_native(tmp_path / "v.safetensors", directions, {})
    for loaded, _ in (read_gguf(tmp_path / "v.gguf"), read_native(tmp_path / "v.safetensors")):
        assert list(loaded) == [3, 8] and all(type(k) is int for k in loaded)
        assert np.array_equal(loaded[3].numpy(), _vec())


def test_read_gguf_converts_f16_tensors(tmp_path):
    path = _gguf_file(tmp_path / "h.gguf", {"direction.4": _vec(dtype=np.float16)})
    loaded, _ = read_gguf(path)
    assert loaded[4].dtype == torch.float32
    assert np.array_equal(loaded[4].numpy(), _vec(dtype=np.float16).astype(np.float32))


def test_write_gguf_layer_zero_warns_but_is_written(tmp_path):
    dirs = _directions(layers=(0, 1))
    with pytest.warns(UserWarning, match="llama.cpp never steers layer 0"):
        write_gguf(tmp_path / "z.gguf", dirs, "llama")
    assert sorted(read_gguf(tmp_path / "z.gguf")[0]) == [0, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_read_gguf_leaves_no_memory_map_behind(tmp_path):
    good = tmp_path / "good.gguf"
    write_gguf(good, _directions(), "llama")
    read_gguf(good)
    bad = _write(tmp_path / "bad.gguf", good.read_bytes()[:-40])
    with pytest.raises(VectorFileError) as excinfo:
        read_gguf(bad)
    maps = Path("/proc/self/maps").read_text()
    assert str(good) not in maps and str(bad) not in maps
    assert excinfo.value.__cause__ is not None
    write_gguf(good, _directions(seed=3), "llama")  # overwriting the file read is fine


# ---------------------------------------------------------------- GGUF validation


_HINT = [lambda w: w.add_string("controlvector.model_hint", "llama")]
_GGUF_BAD = {
    "missing": ("no such file", lambda d: d / "missing.gguf"),
    "directory": ("not a regular file", lambda d: d),
    "too-short": ("too short", lambda d: _write(d / "f", b"GGUF")),
    "bad-magic": ("not a valid GGUF file", lambda d: _write(d / "f", b"NOPE" + bytes(100))),
    "model-architecture": (
        "not a control vector: GGUF architecture is 'llama'",
        lambda d: _gguf_file(d / "f", {"direction.1": _vec()}, arch="llama"),
    ),
    "model-tensor-name": (
        "direction.<layer>",
        lambda d: _gguf_file(d / "f", {"blk.0.attn_q.weight": _vec()}),
    ),
    "negative-layer": (
        "direction.<layer>",
        lambda d: _gguf_file(d / "f", {"direction.-3": _vec()}),
    ),
    "int-type": (
        "ggml type I32",
        lambda d: _gguf_file(d / "f", {"direction.1": np.ones(HIDDEN, np.int32)}),
    ),
    "two-dims": (
        "must be 1-D",
        lambda d: _gguf_file(d / "f", {"direction.1": np.ones((2, HIDDEN), np.float32)}),
    ),
    "lengths-differ": (
        "same hidden size",
        lambda d: _gguf_file(d / "f", {"direction.1": _vec(), "direction.2": _vec(HIDDEN + 1)}),
    ),
    "nan": ("NaN or infinity", lambda d: _gguf_file(d / "f", {"direction.1": _vec() * np.nan})),
    "no-tensors": ("no direction tensors", lambda d: _gguf_file(d / "f", {}, kv=_HINT)),
    "hint-not-string": (
        "model_hint is not a string",
        lambda d: _gguf_file(
            d / "f",
            {"direction.1": _vec()},
            kv=[lambda w: w.add_uint32("controlvector.model_hint", 7)],
        ),
    ),
    "truncated": (
        "past the end of the file",
        lambda d: _write(d / "f", _gguf_file(d / "g", {"direction.1": _vec()}).read_bytes()[:-8]),
    ),
}


@pytest.mark.parametrize(("match", "build"), _GGUF_BAD.values(), ids=_GGUF_BAD.keys())
def test_read_gguf_rejects_bad_files(tmp_path, match, build):
    path = build(tmp_path)
    with pytest.raises(VectorFileError) as excinfo:
        read_gguf(path)
    assert match in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_read_gguf_refuses_huge_array_without_spinning(tmp_path):
    # an array of 2**63 uint8 items declared in a 60-byte file: the stock reader loops for ever
    header = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1)
    key = b"k"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 0, 2**63)
    with pytest.raises(VectorFileError, match="past the end"):
        read_gguf(_write(tmp_path / "arr.gguf", header + kv + b"\0" * 8))


# ---------------------------------------------------------------- property tests


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@pytest.fixture(scope="module")
def valid_files(scratch) -> dict[str, bytes]:
    dirs = _directions(layers=(1, 2, 3))
    write_native(scratch / "valid.safetensors", dirs, {"k": [1, 2]})
    write_gguf(scratch / "valid.gguf", dirs, "llama")
    return {
        "native": (scratch / "valid.safetensors").read_bytes(),
        "gguf": (scratch / "valid.gguf").read_bytes(),
    }


def _only_vector_file_error_or_valid(reader, path: Path) -> None:
    try:
        directions, meta = reader(path)
    except VectorFileError:
        return
    assert isinstance(meta, dict) and directions
    sizes = {t.numel() for t in directions.values()}
    assert len(sizes) == 1
    for layer, tensor in directions.items():
        assert isinstance(layer, int) and layer >= 0
        assert tensor.dtype == torch.float32 and tensor.dim() == 1
        assert bool(torch.isfinite(tensor).all())


_garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"GGUF" + struct.pack("<I", 3) + b),
    st.binary(max_size=300).map(lambda b: struct.pack("<Q", len(b) // 2) + b),
)


@settings(max_examples=150, deadline=None)
@given(data=_garbage)
def test_garbled_bytes_only_raise_vector_file_error(scratch, data):
    path = _write(scratch / "garbled", data)
    _only_vector_file_error_or_valid(read_native, path)
    _only_vector_file_error_or_valid(read_gguf, path)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["native", "gguf"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_valid_files_raise_vector_file_error_or_load(
    scratch, valid_files, kind, flips, cut
):
    data = bytearray(valid_files[kind])
    for index, mask in flips:
        data[index % len(data)] ^= mask
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = _write(scratch / f"damaged.{kind}", bytes(data))
    _only_vector_file_error_or_valid(read_native if kind == "native" else read_gguf, path)


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
_hostile_entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "F8_E4M3"]), st.text()),
        "shape": st.one_of(st.lists(st.integers(-2, 2**64), max_size=3), _json_scalar),
        "data_offsets": st.one_of(st.lists(st.integers(-2, 2**64), max_size=3), _json_scalar),
    }
)
_hostile_metadata = st.one_of(
    _json_scalar,
    st.lists(_json_scalar, max_size=3),
    st.dictionaries(st.text(max_size=5), _json_scalar, max_size=3),
    st.just(_tagged()),
)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.dictionaries(
        st.sampled_from(["direction.0", "direction.1", "w", "__metadata__"]),
        _hostile_entry,
        max_size=3,
    ),
    metadata=_hostile_metadata,
    body=st.binary(max_size=64),
    declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_hostile_safetensors_headers_only_raise_vector_file_error(
    scratch, entries, metadata, body, declared
):
    header = dict(entries)
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    length = len(raw) if declared is None else declared
    path = _write(scratch / "hostile.safetensors", struct.pack("<Q", length) + raw + body)
    _only_vector_file_error_or_valid(read_native, path)


def test_gguf_model_hint_is_the_architecture_name(tmp_path):
    from actsteer import ModelFingerprint, SteeringVector, VectorMeta
    from actsteer.core.vector import arch_name

    assert [arch_name(a) for a in ("LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel")] == [
        "llama",
        "qwen2",
        "gpt2",
    ]
    fp = ModelFingerprint("org/m", "LlamaForCausalLM", 4, 3)
    vec = SteeringVector({1: torch.ones(4)}, VectorMeta(model=fp))
    vec.to_gguf(tmp_path / "v.gguf")
    _, meta = read_gguf(tmp_path / "v.gguf")
    assert meta["model_hint"] == "llama"
