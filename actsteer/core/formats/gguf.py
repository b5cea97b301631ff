"""llama.cpp control-vector GGUF files (also repeng's export format): writing them so that
llama.cpp's ``--control-vector`` loader and repeng's ``import_gguf`` read them, and reading
the files those tools and llama.cpp's ``cvector-generator`` write.

What the other tools require, read from their source:

* llama.cpp ``common/common.cpp``, ``common_control_vector_load_one`` (formerly
  ``llama_control_vector_load_one``): reads no metadata key at all. Every tensor must be named
  ``direction.<int>`` with the int > 0 -- a ``direction.0`` tensor (or any other name) makes it
  reject the whole file -- and be F32, 1-D, with the same element count as the others. It puts
  ``direction.N`` in the slot applied after decoder block N (layer 0 is never steered).
* repeng 0.4 ``repeng/extract.py``, ``ControlVector.export_gguf``: ``GGUFWriter(path,
  "controlvector")``, string ``controlvector.model_hint``, uint32 ``controlvector.layer_count``
  (= number of directions), then ``add_tensor(f"direction.{layer}", float32 array)``.
  ``import_gguf`` only warns if ``general.architecture`` is not ``controlvector``, raises if
  ``controlvector.model_hint`` is missing, and reads every ``direction.<int>`` tensor.
* llama.cpp ``cvector-generator`` writes architecture ``controlvector``, string
  ``controlvector.model_hint`` (the model's architecture; newer builds omit it when empty),
  ``controlvector.layer_count`` as int32, and F32 tensors ``direction.1`` .. ``direction.<n-1>``.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np
import torch

from actsteer.core.formats._common import (
    atomic_write,
    check_loaded,
    checked_size,
    direction_name,
    file_error,
    prepare_directions,
    require_layer,
)
from actsteer.errors import VectorFileError

ARCH = "controlvector"
_PathLike = str | os.PathLike[str]
_FLOAT_TYPES = {
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.F64,
}
_MAX_READS = 200_000  # a control vector needs a few per tensor; a model's vocabulary needs more
_MIN_GGUF_BYTES = 24  # magic, version, tensor count, kv count


def write_gguf(path: _PathLike, directions: Mapping[int, torch.Tensor], model_hint: str) -> None:
    """Export directions as a llama.cpp control vector, in exactly repeng 0.4's layout, so
    llama.cpp ``--control-vector`` and repeng ``import_gguf`` load it. Written atomically."""
    if not isinstance(model_hint, str):
        raise TypeError(f"model_hint must be a str, got {type(model_hint).__name__}")
    tensors = prepare_directions(directions)
    if 0 in tensors:
        warnings.warn(
            f"{os.fspath(path)}: writing direction.0 (decoder layer 0). llama.cpp never steers "
            "layer 0, and its control-vector loader rejects a whole file that contains "
            "direction.0; repeng and actsteer read it. Leave layer 0 out to export for llama.cpp.",
            UserWarning,
            stacklevel=2,
        )
    atomic_write(path, lambda tmp: _write_controlvector(tmp, tensors, model_hint))


def read_gguf(path: _PathLike) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Load a control-vector GGUF (repeng, llama.cpp cvector-generator, actsteer): float32
    directions keyed by layer and ``{"source_format": "gguf", "model_hint": ...}``."""
    size = checked_size(path)
    if size < _MIN_GGUF_BYTES:
        raise file_error(path, f"too short ({size} bytes) to be a GGUF file")
    try:
        with np.errstate(all="raise"):
            model_hint, named = _parse(path)
    except Exception as exc:
        if exc.__traceback__ is not None:  # drop the reader (and its memory map) the frames hold
            traceback.clear_frames(exc.__traceback__)
        if isinstance(exc, VectorFileError):
            raise
        raise file_error(path, f"not a valid GGUF file: {type(exc).__name__}: {exc}") from exc
    meta: dict[str, Any] = {"source_format": "gguf"}
    if model_hint is not None:
        meta["model_hint"] = model_hint
    return check_loaded(path, named), meta


def _write_controlvector(tmp: str, tensors: Mapping[int, torch.Tensor], model_hint: str) -> None:
    """The GGUFWriter calls of repeng 0.4's ``export_gguf``, in its order."""
    writer = gguf.GGUFWriter(tmp, ARCH)  # also writes general.architecture = "controlvector"
    try:
        writer.add_string(f"{ARCH}.model_hint", model_hint)  # repeng's import requires it
        writer.add_uint32(f"{ARCH}.layer_count", len(tensors))  # repeng: uint32 count
        for layer, tensor in tensors.items():
            writer.add_tensor(direction_name(layer), tensor.numpy())  # F32, 1-D
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


class _BoundedReader(gguf.GGUFReader):
    """GGUFReader whose every read is checked against the end of the file and counted, so a
    hostile header (huge counts or lengths) fails fast instead of reading garbage or spinning."""

    def __init__(self, path: _PathLike) -> None:
        self._reads_left = _MAX_READS
        super().__init__(path, mode="r")

    def _get(self, offset: Any, dtype: Any, count: Any = 1, override_order: Any = None) -> Any:
        self._reads_left -= 1
        if self._reads_left < 0:
            raise ValueError("too many metadata entries for a control vector")
        start, count = int(offset), int(count)
        end = start + np.dtype(dtype).itemsize * count
        if start < 0 or count < 0 or end > self.data.shape[0]:
            raise ValueError(f"a field at byte {start} runs past the end of the file (truncated)")
        return super()._get(start, dtype, count, override_order)


def _parse(path: _PathLike) -> tuple[str | None, dict[str, torch.Tensor]]:
    """Read the header and copy every tensor out of the memory map into torch tensors."""
    reader: _BoundedReader | None = _BoundedReader(path)
    try:
        arch = _string_field(path, reader, "general.architecture")
        if arch is not None and arch != ARCH:
            raise file_error(
                path, f"not a control vector: GGUF architecture is {arch!r}, not {ARCH!r}"
            )
        model_hint = _string_field(path, reader, f"{ARCH}.model_hint")
        named = {t.name: _copy_tensor(path, t) for t in reader.tensors}
        return model_hint, named
    finally:
        reader = None  # the memory map closes with the last reference to it


def _string_field(path: _PathLike, reader: gguf.GGUFReader, key: str) -> str | None:
    """Value of string field ``key``, None if absent; a non-string value is an error."""
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types != [gguf.GGUFValueType.STRING]:
        raise file_error(path, f"GGUF field {key} is not a string")
    return bytes(field.parts[-1]).decode("utf-8", errors="replace")


def _copy_tensor(path: _PathLike, tensor: Any) -> torch.Tensor:
    """Copy one direction tensor out of the file as float32, after llama.cpp's checks: the name,
    a float type (llama.cpp needs F32; F16/F64 are read too) and one dimension."""
    require_layer(path, tensor.name)
    if tensor.tensor_type not in _FLOAT_TYPES:
        raise file_error(
            path,
            f"tensor {tensor.name!r} has ggml type {tensor.tensor_type.name}; control vectors "
            "are F32 (F16 and F64 are also read)",
        )
    dims = [int(d) for d in tensor.shape]
    if not dims or any(d != 1 for d in dims[1:]):  # ggml_n_dims ignores trailing 1s
        raise file_error(path, f"tensor {tensor.name!r} has shape {dims}; a direction must be 1-D")
    return torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
