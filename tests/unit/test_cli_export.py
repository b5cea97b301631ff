"""``actsteer export`` on a vector that has layer 0: a one-line notice, not a Python warning."""

from __future__ import annotations

import torch

from actsteer import SteeringVector
from actsteer.cli import main


def test_layer0_export_notice_is_one_line(tmp_path, capsys, recwarn):
    src, out = tmp_path / "v.safetensors", tmp_path / "v.gguf"
    SteeringVector({0: torch.ones(8), 1: torch.ones(8)}).save(src)
    assert main(["export", str(src), "--gguf", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("actsteer: note: layer 0 left out of the GGUF")
    assert len(recwarn) == 0  # nothing reached Python's warning machinery
    assert out.exists()
