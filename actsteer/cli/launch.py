"""Start ``actsteer serve`` (a vLLM server with the plugin) as a child process and wait until it
answers: for tests, benchmarks and scripts that need a server for a while. Imports nothing of
vLLM, so it runs from the client's environment with vLLM's own venv as ``python``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

#: What ``actsteer serve`` prints once the server is up and steers.
READY = "actsteer: serving "

#: Options that make the embedded model's greedy output equal to transformers' on a CPU.
EAGER_FP32 = ("--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "16")


class Server:
    """A running ``actsteer serve``; ``url`` is its ``/v1`` base URL. ``stop()`` ends it."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        """End the server and every process vLLM started (they share its process group)."""
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue
            return

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
    env: dict[str, str] | None = None,
) -> Server:
    """Start the server for the embedded model and return once ``actsteer serve`` reports it
    ready (vLLM answers and the steering self-check passed); raises ``RuntimeError`` with the
    log's tail if it exits or does not come up in ``timeout``."""
    port = free_port()
    command = [str(python), "-m", "actsteer.cli", "serve", "--port", str(port)]
    command += ["--vectors", str(vectors)] if vectors else []
    command += ["--", *vllm_args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    log = Path(log)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() ends vLLM's workers too
        )
    server = Server(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()  # vLLM's own processes may outlive the command
            raise RuntimeError(f"the vLLM server exited ({proc.returncode}):\n{server.tail()}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the vLLM server did not start in {timeout:g} s:\n{server.tail()}")
        if READY in log.read_text(errors="replace"):
            return server
        time.sleep(1)
