"""Start ``actsteer serve`` (a vLLM server with the plugin) as a child process and wait until it
answers: for tests, benchmarks and scripts that need a server for a while. Imports nothing of
vLLM, so it runs from the client's environment with vLLM's own venv as ``python``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

#: Options that make the embedded model's greedy output equal to transformers' on a CPU.
EAGER_FP32 = ("--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "16")


class Server:
    """A running ``actsteer serve``; ``url`` is its ``/v1`` base URL. ``stop()`` ends it."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    python: str | os.PathLike[str],
    log: str | os.PathLike[str],
    *,
    vectors: str | os.PathLike[str] | None = None,
    vllm_args: Sequence[str] = (*EAGER_FP32, "--enforce-eager"),
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 420.0,
) -> Server:
    """Start the server for the embedded model and return once ``/health`` answers; raises
    ``RuntimeError`` with the log's tail if it exits or does not come up in ``timeout``."""
    port = free_port()
    command = [str(python), "-m", "actsteer.cli", "serve", "--port", str(port)]
    command += ["--vectors", str(vectors)] if vectors else []
    command += ["--", *vllm_args]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    log = Path(log)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({proc.returncode}):\n{server.tail()}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the vLLM server did not start in {timeout:g} s:\n{server.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
