"""A real vLLM server with actsteer's plugin, started once for these tests: the embedded model,
eager fp32, on 127.0.0.1. vLLM lives in its own venv (``make install-vllm`` builds
``.venv-vllm``: its pinned transformers differs from ``.venv``'s). Without it these tests skip,
unless ``ACTSTEER_REQUIRE_VLLM=1`` (``make test``, CI), where they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from actsteer.vllm import launch

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("ACTSTEER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="session")
def vectors(tmp_path_factory, real) -> Path:
    """The server's vectors folder: ``mine`` is the local ``love`` preset's vector."""
    folder = tmp_path_factory.mktemp("vectors")
    real.preset("love").save(folder / "mine.safetensors")
    return folder


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """vLLM's venv's python (skips, or fails under ``ACTSTEER_REQUIRE_VLLM=1``, without it)."""
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed at {VLLM_PYTHON} (run `make install-vllm`)"
        if os.environ.get("ACTSTEER_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def server(tmp_path_factory, vectors, vllm_python) -> Iterator[str]:
    """The server's ``/v1`` URL."""
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        # prompts over 48 tokens are prefilled in chunks: positions must stay right across them
        args = (*launch.EAGER_FP32, "--enforce-eager", "--max-num-batched-tokens", "48")
        running = launch.start(vllm_python, log, vectors=vectors, vllm_args=args, cwd=ROOT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield running.url
    finally:
        running.stop()
