"""Vector files on disk: actsteer's native safetensors format (directions plus JSON metadata)
and llama.cpp / repeng control-vector GGUF, each with a writer that saves atomically and a
reader that validates everything and turns every file problem into ``VectorFileError``.
Directions are keyed by 0-based decoder layer N (Hugging Face ``layers[N]``), stored as
float32 tensors named ``direction.N``."""

from actsteer.core.formats.gguf import read_gguf, write_gguf
from actsteer.core.formats.native import read_native, write_native

__all__ = ["read_gguf", "read_native", "write_gguf", "write_native"]
