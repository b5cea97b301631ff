"""Plumbing shared by the vector file formats: the size cap, atomic writes, and the checks that
every writer applies to the directions it is given and every reader applies to what it loads."""

from __future__ import annotations

import contextlib
import numbers
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from actsteer.errors import LayerError, NonFiniteError, VectorFileError, VectorShapeError

MAX_FILE_BYTES = 2 * 1024**3
"""Largest vector file a reader opens; bigger files are refused before a byte is read."""
#: Positions of a per-position (ActAdd) direction ``(positions, hidden)``, at most.
MAX_POSITIONS = 4096

_NAME_RE = re.compile(r"direction\.([0-9]{1,10})", re.ASCII)
_MAX_LAYER = 2**31 - 1  # llama.cpp parses the index into a C int


def file_error(path: str | os.PathLike[str], reason: str) -> VectorFileError:
    """Build the one error every file problem becomes: the path, then the specific reason."""
    return VectorFileError(f"{os.fspath(path)}: {reason}")


def direction_name(layer: int) -> str:
    """Tensor name of the direction for 0-based decoder layer ``layer``."""
    return f"direction.{layer}"


def layer_from_name(name: str) -> int | None:
    """Layer index named by a ``direction.N`` tensor name, or None if the name is not one."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    layer = int(match.group(1))
    return layer if layer <= _MAX_LAYER else None


def checked_size(path: str | os.PathLike[str]) -> int:
    """Size of the regular file at ``path``; refuses missing, non-regular and oversized files."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise file_error(path, "no such file") from exc
    except (OSError, ValueError) as exc:
        raise file_error(path, f"cannot read: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise file_error(path, "not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise file_error(
            path, f"file is {info.st_size} bytes, over the 2 GiB limit for vector files"
        )
    return info.st_size


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, fsync it and move it into place, so
    an interrupted save leaves either the old file or the new one, never a broken one."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        os.close(os.open(tmp, flags, 0o666))  # 0o666 so the umask applies, as for open()
        write(tmp)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise file_error(path, f"cannot write: {exc}") from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows syncing a directory (POSIX)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_directions(
    directions: Mapping[int, Any], *, positional: bool = False
) -> dict[int, torch.Tensor]:
    """Check directions before saving and return them as fresh float32 contiguous CPU tensors,
    sorted by layer: 1-D, or also ``(positions, hidden)`` where the format takes per-position
    (ActAdd) directions; a writer never produces a file its reader would refuse."""
    if not isinstance(directions, Mapping) or not directions:
        raise VectorShapeError("a vector file needs at least one direction (a non-empty mapping)")
    out: dict[int, torch.Tensor] = {}
    for layer in sorted(directions, key=_layer_sort_key):
        if not _is_int(layer) or not 0 <= layer <= _MAX_LAYER:
            raise LayerError(f"layer keys must be non-negative ints, got {layer!r}")
        tensor = torch.as_tensor(directions[layer]).detach()
        layer = int(layer)
        if not direction_shape_ok(tuple(tensor.shape), positional):
            raise VectorShapeError(
                f"direction for layer {layer} has shape {tuple(tensor.shape)}; it must be "
                + DIRECTION_SHAPES[positional]
            )
        if not tensor.is_floating_point():
            raise VectorShapeError(f"direction for layer {layer} has dtype {tensor.dtype}")
        out[layer] = tensor.to(device="cpu", dtype=torch.float32).clone().contiguous()
    _check_same_length({direction_name(k): v for k, v in out.items()}, VectorShapeError)
    for layer, tensor in out.items():
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"direction for layer {layer} contains NaN or infinity")
    return out


def _layer_sort_key(layer: Any) -> tuple[int, Any]:
    """Sort ints numerically and put anything else first, so the key check reports it."""
    return (1, int(layer)) if _is_int(layer) else (0, 0)


def _is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (a bool key is surely a mistake)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


DIRECTION_SHAPES = {
    False: "1-D and non-empty",
    True: f"1-D, or 2-D (positions, hidden) with 1-{MAX_POSITIONS} positions, and non-empty",
}


def direction_shape_ok(shape: tuple[int, ...], positional: bool) -> bool:
    """A direction's shape: ``(hidden,)``, or ``(positions, hidden)`` where allowed."""
    if len(shape) == 1:
        return shape[0] > 0
    return positional and len(shape) == 2 and 0 < shape[0] <= MAX_POSITIONS and shape[1] > 0


def check_loaded(
    path: str | os.PathLike[str], named: Mapping[str, torch.Tensor], *, positional: bool = False
) -> dict[int, torch.Tensor]:
    """Validate tensors read from a file and return float32 directions keyed by layer
    (``positional``: the format also holds per-position ``(positions, hidden)`` ones)."""
    if not named:
        raise file_error(path, "contains no direction tensors")
    out: dict[int, torch.Tensor] = {}
    for name, tensor in named.items():
        layer = require_layer(path, name)
        if layer in out:
            raise file_error(path, f"two tensors name layer {layer} (last: {name!r})")
        if not direction_shape_ok(tuple(tensor.shape), positional):
            reason = f"tensor {name!r} has shape {tuple(tensor.shape)}; a direction must be "
            raise file_error(path, reason + DIRECTION_SHAPES[positional])
        if not tensor.is_floating_point():
            raise file_error(path, f"tensor {name!r} has dtype {tensor.dtype}, not floating")
        out[layer] = tensor.to(torch.float32).contiguous()
    out = dict(sorted(out.items()))
    _check_same_length(
        {direction_name(k): v for k, v in out.items()}, lambda msg: file_error(path, msg)
    )
    for layer, tensor in out.items():
        if not bool(torch.isfinite(tensor).all()):
            raise file_error(path, f"tensor {direction_name(layer)!r} contains NaN or infinity")
    return out


def require_layer(path: str | os.PathLike[str], name: str) -> int:
    """Layer index of tensor ``name``, or a VectorFileError saying the name is not allowed."""
    layer = layer_from_name(name)
    if layer is None:
        raise file_error(
            path, f"tensor {name!r} is not named direction.<layer> (layer a non-negative integer)"
        )
    return layer


def _check_same_length(
    named: Mapping[str, torch.Tensor], error: Callable[[str], Exception]
) -> None:
    """All directions of one vector live in one residual stream, so they share one length."""
    first_name, first = next(iter(named.items()))
    for name, tensor in named.items():
        if tensor.shape[-1] != first.shape[-1]:
            raise error(
                f"{name} has hidden size {tensor.shape[-1]} but {first_name} has "
                f"{first.shape[-1]}: every layer's direction must have the same hidden size"
            )
