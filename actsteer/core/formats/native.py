"""actsteer's native vector format: one ``.safetensors`` file holding float32 tensors named
``direction.N`` (N = 0-based decoder layer; 1-D, or 2-D ``(positions, hidden)`` for a
per-position ActAdd vector) and, in the header's string metadata, a format tag,
a format version and the vector's JSON ``meta`` object. Never pickle: the header is parsed here
from bytes read with a size cap, and the tensors are decoded by safetensors."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from actsteer.core.formats._common import (
    DIRECTION_SHAPES,
    MAX_FILE_BYTES,
    atomic_write,
    check_loaded,
    checked_size,
    direction_name,
    direction_shape_ok,
    file_error,
    layer_from_name,
    prepare_directions,
    require_layer,
)

FORMAT_TAG = "actsteer.vector"
FORMAT_VERSION = "1"
_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_PathLike = str | os.PathLike[str]


def write_native(
    path: _PathLike, directions: Mapping[int, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Save per-layer directions (stored float32) and a JSON-serialisable ``meta`` object as one
    safetensors file, atomically, so a crash mid-save never leaves a broken vector behind."""
    tensors = prepare_directions(directions, positional=True)
    header = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "meta": _dump_meta(path, meta),
    }
    named = {direction_name(layer): tensor for layer, tensor in tensors.items()}
    data = safetensors.torch.save(named, metadata=header)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_native(path: _PathLike) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Load a native vector file: float32 directions keyed by layer, and its ``meta`` object.
    Any problem with the file raises VectorFileError naming the file and the reason."""
    checked_size(path)
    data = _read_bytes(path)
    header = _parse_header(path, data)
    meta = _parse_metadata(path, header.pop("__metadata__", None), header)
    body_len = len(data) - 8 - struct.unpack_from("<Q", data)[0]
    for name, entry in header.items():
        _check_entry(path, name, entry, body_len)
    try:
        named = safetensors.torch.load(data)
    except Exception as exc:  # the decoder's errors are many and unexported
        raise file_error(path, f"not a valid safetensors file: {exc}") from exc
    return check_loaded(path, named, positional=True), meta


def _dump_meta(path: _PathLike, meta: Mapping[str, Any]) -> str:
    """Serialise ``meta`` to sorted, strict JSON (no NaN) or explain why it cannot be."""
    if not isinstance(meta, Mapping):
        raise file_error(path, f"meta must be a mapping, got {type(meta).__name__}")
    try:
        return json.dumps(dict(meta), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise file_error(path, f"meta is not JSON-serialisable: {exc}") from exc


def _read_bytes(path: _PathLike) -> bytes:
    """Read the whole file, at most the size cap (it may have grown since it was checked)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise file_error(path, f"cannot read: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise file_error(path, "file grew over the 2 GiB limit for vector files while read")
    return data


def _parse_header(path: _PathLike, data: bytes) -> dict[str, Any]:
    """Decode the safetensors header: an 8-byte little-endian length, then a JSON object."""
    if len(data) < 8:
        raise file_error(path, f"too short ({len(data)} bytes) to be a safetensors file")
    (length,) = struct.unpack_from("<Q", data)
    if length > len(data) - 8:
        raise file_error(
            path,
            f"declared header length {length} is larger than the file ({len(data)} bytes): "
            "truncated, or not a safetensors file",
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise file_error(path, f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise file_error(path, "safetensors header is not a JSON object")
    return header


def _parse_metadata(path: _PathLike, raw: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Check the format tag and version and return the parsed ``meta``; an untagged file whose
    tensors are all ``direction.N`` (another tool's export) is accepted with empty meta."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise file_error(path, "header __metadata__ is not a map of strings to strings")
    tag = raw.get("format")
    if tag is None:
        for name in tensors:
            if layer_from_name(name) is None:
                raise file_error(
                    path,
                    f"not an actsteer vector: no format tag, and tensor {name!r} is not "
                    "named direction.<layer>",
                )
        return {}
    if tag != FORMAT_TAG:
        raise file_error(
            path, f"not an actsteer vector: format tag is {tag!r}, expected {FORMAT_TAG!r}"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise file_error(
            path,
            f"unsupported format_version {version!r}: this actsteer reads format_version "
            f"{FORMAT_VERSION!r}",
        )
    try:
        meta = json.loads(raw.get("meta", "{}"))
    except (ValueError, RecursionError) as exc:
        raise file_error(path, f"meta is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise file_error(path, f"meta is JSON {type(meta).__name__}, not a JSON object")
    return meta


def _check_entry(path: _PathLike, name: str, entry: Any, body_len: int) -> None:
    """Check one tensor's header entry (name, dtype, shape, offsets inside the data section)
    so a bad file is refused with a specific reason before the decoder sees it."""
    require_layer(path, name)
    if not isinstance(entry, dict):
        raise file_error(path, f"header entry for {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _FLOAT_DTYPES:
        raise file_error(
            path, f"tensor {name!r} has dtype {dtype!r}; a direction must be F16, BF16, F32 or F64"
        )
    if not _int_list(shape) or not direction_shape_ok(tuple(shape), True):
        allowed = DIRECTION_SHAPES[True]
        raise file_error(
            path, f"tensor {name!r} has shape {shape!r}; a direction must be {allowed}"
        )
    if not _int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise file_error(path, f"tensor {name!r} has malformed data_offsets {offsets!r}")
    if offsets[1] > body_len:
        raise file_error(
            path,
            f"tensor {name!r} data_offsets {offsets} run past the end of the data section "
            f"({body_len} bytes): truncated or corrupt",
        )
    if offsets[1] - offsets[0] != math.prod(shape) * _FLOAT_DTYPES[dtype]:
        raise file_error(path, f"tensor {name!r} data_offsets do not match its shape and dtype")


def _int_list(value: Any) -> bool:
    """True for a list of non-negative ints (JSON booleans excluded)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
