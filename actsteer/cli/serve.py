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
from pathlib import Path
from typing import Any

from ..errors import ActsteerError
from ..vllm.served import BUNDLE_ENV
from .bundle import write_bundle
from .commands import load_model
from .launch import READY


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
    tool_args = tool_flags(sm.tokenizer, args.vllm_args, cache_root() / "serve" / f"{key}.jinja")
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
        *tool_args,
        *args.vllm_args,
    ]
    env = dict(os.environ, **{BUNDLE_ENV: str(bundle)})
    # actsteer's clients send their own call grammar (one call when forced, compact arguments);
    # vLLM's strict tool calling would swap it for one that allows any whitespace inside the
    # arguments, which a small model fills with newlines until max_tokens
    env.setdefault("VLLM_ENFORCE_STRICT_TOOL_CALLING", "0")
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


#: vLLM's tool parser for each of actsteer's call formats (``actsteer.tools.formats``).
TOOL_PARSERS = {"hermes": "hermes", "llama": "llama3_json", "mistral": "mistral"}


def tool_flags(tokenizer: Any, vllm_args: list[str], template_path: Path) -> list[str]:
    """vLLM's flags for tool calling with the model's call format, unless the user passed their
    own: ``--enable-auto-tool-choice --tool-call-parser``, and for a chat template without tool
    support the tool-aware one that renders actsteer's generic tools block
    (``actsteer.tools.template``), so the server writes the prompt the local engine writes."""
    from ..tools.formats import format_for
    from ..tools.template import generic_template

    given = {a.split("=")[0] for a in vllm_args}
    if "--tool-call-parser" in given:
        return []
    fmt = format_for(tokenizer)
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSERS[fmt.name]]
    template = getattr(tokenizer, "chat_template", None)
    if not fmt.native and isinstance(template, str) and "--chat-template" not in given:
        template_path.parent.mkdir(parents=True, exist_ok=True)
        template_path.write_text(generic_template(template))
        flags += ["--chat-template", str(template_path)]
    return flags


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
