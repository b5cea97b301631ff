"""``actsteer serve``: the serve bundle, then vLLM's OpenAI server with the plugin, announced only
once a self-check shows that it steers. Runs in vLLM's venv; imports nothing of vLLM itself."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from ..commands import load_model
from ..errors import ActsteerError
from .bundle import write_bundle
from .launch import READY
from .served import BUNDLE_ENV


def cmd_serve(args: argparse.Namespace) -> int:
    """Prepare the serve bundle from the Hugging Face model, then run vLLM's OpenAI server with
    actsteer's plugin until interrupted. Once the server answers, a self-check asks for the
    same completion with and without steering: if they agree, the plugin is not active in
    vLLM's processes and the server is stopped with an error; otherwise the URL is printed."""
    from ..default_model import cache_root, ensure_converted

    sm = load_model(args)
    name = sm.fingerprint.name
    folder = args.model or str(ensure_converted(progress=False))
    key = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-48:]
    bundle = write_bundle(sm, cache_root() / "serve" / f"{key}.json", vectors=args.vectors)
    del sm  # vLLM loads its own copy of the weights
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        folder,
        "--served-model-name",
        name,
        "--host",
        args.host,
        "--port",
        str(args.port),
        *args.vllm_args,
    ]
    env = dict(os.environ, **{BUNDLE_ENV: str(bundle)})
    server = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM ends vLLM too, like Ctrl-C
    url = f"http://{args.host}:{args.port}"
    try:
        while server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(1)
        if server.poll() is None:
            problem = _steering_probe(url, name)
            if problem:  # never serve steered requests unsteered
                server.terminate()
                server.wait(60)
                raise ActsteerError(problem)
            print(f"{READY}{name} at {url}/v1", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(30)
        return 130


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _steering_probe(url: str, model: str) -> str | None:
    """Ask the running server for the same completion with and without strong steering; if
    they agree, the plugin is not active in vLLM's model runner (it failed to load there, say)
    and the problem is returned. None when steering works."""

    def complete(xargs: dict[str, str] | None) -> str:
        body = {"model": model, "prompt": "I like", "max_tokens": 12, "temperature": 0}
        if xargs:
            body["vllm_xargs"] = xargs
        request = urllib.request.Request(
            f"{url}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())["choices"][0]["text"]

    try:
        plain, steered = complete(None), complete({"actsteer": "dogs:2"})
    except OSError as exc:
        return f"the server failed its steering self-check: {exc}"
    if plain == steered:
        return (
            "the server answered a steered request unsteered: actsteer's plugin is not active "
            "in vLLM's model runner (see the server log for a failed plugin load)"
        )
    return None
