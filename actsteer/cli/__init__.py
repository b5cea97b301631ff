"""The ``actsteer`` command line: demo, extract, generate, inspect, export, import, presets,
eval, sweep, calibrate (each command's work is in ``commands``).

Conventions: ``--help`` everywhere, ``--model`` (default: the embedded SmolLM2), ``--steer EXPR``,
``--json`` for machine-readable output, progress bars on long work, and a one-line error with a
non-zero exit status on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ActsteerError
from .commands import (
    cmd_calibrate,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_extract,
    cmd_generate,
    cmd_import,
    cmd_inspect,
    cmd_presets,
    cmd_sweep,
)
from .serve import cmd_serve

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actsteer", description="Steering vectors for local LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument("--json", action="store_true", help="machine-readable JSON output")
        if model:
            p.add_argument(
                "--model", help="Hugging Face model id or path (default: embedded SmolLM2)"
            )
        return p

    p = add(
        "demo",
        cmd_demo,
        "side-by-side: unsteered, system prompt, template vector, contrastive vectors",
    )
    p.add_argument("--max-new-tokens", type=int, default=40)

    p = add("generate", cmd_generate, "complete a prompt, optionally steered")
    p.add_argument("prompt")
    p.add_argument(
        "--steer",
        help='steering expression, e.g. "love:2 - formal" or "file:v.safetensors:2", or JSON '
        'of Steering fields, e.g. \'{"expression": "love", "operator": "ablate"}\'',
    )
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message")
    p.add_argument("--system", help="system prompt (implies --chat)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true")

    p = add("extract", cmd_extract, "extract a vector and save it (.safetensors)")
    p.add_argument(
        "--method",
        choices=["mean_diff", "pca", "actadd", "prompt_template", "distill"],
        default="mean_diff",
    )
    p.add_argument("--pairs", help="JSON/JSONL file of [positive, negative] pairs")
    p.add_argument("--positive")
    p.add_argument("--negative")
    p.add_argument(
        "--system", "--system-prompt", dest="system_prompt", help="system prompt to compile"
    )
    p.add_argument("--template", help="user prompt template containing {input} to compile")
    p.add_argument("--inputs", help="text file of user inputs, one per line (template methods)")
    p.add_argument("--test-inputs", help="distill: held-out inputs for the reported fidelity")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--steps", type=int, default=70, help="distill: most training steps")
    p.add_argument("--seed", type=int, default=0, help="distill: seed of the data split and order")
    p.add_argument("--layers", help="e.g. 6 or 4-8 or 2,4,6-9 (default: all)")
    p.add_argument("-o", "--output", required=True)

    p = add("inspect", cmd_inspect, "show a vector file's layers, norms and metadata", model=False)
    p.add_argument("file")
    p.add_argument("--full", action="store_true", help="include the source prompts")

    p = add(
        "export",
        cmd_export,
        "write a vector as a llama.cpp / repeng GGUF control vector",
        model=False,
    )
    p.add_argument("file")
    p.add_argument("--gguf", required=True, help="output .gguf path")
    p.add_argument("--model-hint", default=None)
    p.add_argument("--keep-layer0", action="store_true")

    p = add("import", cmd_import, "read a GGUF control vector into actsteer's format")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument(
        "--record-model", action="store_true", help="record the (default) model's fingerprint"
    )

    p = add(
        "eval", cmd_eval, "compare no steering / system prompt / vector / both on held-out prompts"
    )
    p.add_argument("--steer", required=True, help="a preset name or steering expression")
    p.add_argument("--check", help="behaviour check id (default: the preset's)")
    p.add_argument("--system-prompt", help="the system prompt to compare against")
    p.add_argument("--prompts", type=int, default=8, help="number of held-out prompts (max 48)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--fidelity", action="store_true", help="also measure fidelity to the prompt")
    p.add_argument("--markdown", help="also write a Markdown report to this file")

    for name, fn, help_ in (
        ("sweep", cmd_sweep, "behaviour and quality over coefficients x layers (JSON + PNG)"),
        ("calibrate", cmd_calibrate, "choose layers and coefficient under a quality budget"),
    ):
        p = add(name, fn, help_)
        p.add_argument("--steer", required=True, help="a preset name or file:PATH")
        p.add_argument("--check", help="behaviour check id (default: the preset's)")
        p.add_argument("--coeffs", default="0.5,1,2,4")
        p.add_argument("--layers", action="append", help="a layer set, e.g. 4-6 (repeatable)")
        p.add_argument("--prompts", type=int, default=8)
        p.add_argument("--max-new-tokens", type=int, default=32)
        p.add_argument(
            "-o",
            "--output",
            required=True,
            help="output path (sweep: .json/.png stem; calibrate: .safetensors)",
        )
        if name == "calibrate":
            p.add_argument("--max-ppl-ratio", type=float, default=1.25)

    add("presets", cmd_presets, "list the built-in presets", model=False)

    p = add(
        "serve",
        cmd_serve,
        "serve a model with vLLM and per-request steering (needs actsteer[vllm]); "
        "vLLM's own options go after --",
    )
    p.add_argument("--vectors", help="folder of .safetensors vectors requests may name (file:NAME)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return parser


def _check_expression(text: str | None, *, json_ok: bool = False) -> None:
    """Fail fast, before loading any model: the expression (or, where taken, the JSON of
    Steering fields) parses and its presets exist."""
    if text:
        from ..resolve import check, from_text

        if json_ok:
            from_text(text)
        else:
            check(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # `actsteer serve [opts] -- [vLLM options]`
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.vllm_args = rest
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show the long work; loading is quick
    try:
        _check_expression(getattr(args, "steer", None), json_ok=args.fn is cmd_generate)
        return int(args.fn(args) or 0)
    except (ActsteerError, OSError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"actsteer: error: {first}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
