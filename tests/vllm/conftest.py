"""A real vLLM server with actsteer's plugin, started once for these tests: the embedded model,
eager fp32, on 127.0.0.1. vLLM lives in its own venv (``make install-vllm`` builds
``.venv-vllm``: its pinned transformers differs from ``.venv``'s). Without it these tests skip,
unless ``ACTSTEER_REQUIRE_VLLM=1`` (CI), where they fail."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("ACTSTEER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
STARTUP_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vectors(tmp_path_factory, real) -> Path:
    """The server's vectors folder: ``mine`` is the local ``love`` preset's vector."""
    folder = tmp_path_factory.mktemp("vectors")
    real.preset("love").save(folder / "mine.safetensors")
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory, vectors) -> Iterator[str]:
    """The server's ``/v1`` URL."""
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed at {VLLM_PYTHON} (run `make install-vllm`)"
        if os.environ.get("ACTSTEER_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2")
    command = [str(VLLM_PYTHON), "-m", "actsteer.cli", "serve", "--port", str(port)]
    command += ["--vectors", str(vectors), "--"]
    command += ["--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "16"]
    command += ["--enforce-eager"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited ({proc.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start in {STARTUP_S} s:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
