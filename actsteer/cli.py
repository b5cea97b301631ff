"""The ``actsteer`` command line: demo, extract, generate, inspect, export, import, presets.

Conventions: ``--help`` everywhere, ``--model`` (default: the embedded SmolLM2), ``--steer EXPR``,
``--json`` for machine-readable output, progress bars on long work, and a one-line error with a
non-zero exit status on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ActsteerError

EXIT_BAD_INPUT = 2


def _model(args: argparse.Namespace):
    from .model import SteeredModel

    if getattr(args, "model", None):
        return SteeredModel.from_pretrained(args.model)
    return SteeredModel.default()


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from .expressions import parse

    expr = parse(f"x@{text}")
    return list(expr.terms[0].layers or ())


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_presets(args: argparse.Namespace) -> int:
    from . import presets

    rows = [
        {
            "name": p.name,
            "method": p.method,
            "layers": None if p.layers is None else list(p.layers),
            "coeff": p.coeff,
            "scale": p.scale,
            "check": p.check,
            "description": p.description,
        }
        for p in presets.list_presets()
    ]
    width = max(len(r["name"]) for r in rows)
    text = "\n".join(f"{r['name']:<{width}}  {r['method']:<15} {r['description']}" for r in rows)
    _emit(args, rows, text)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    sm = _model(args)
    prompt: Any = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    if args.chat and args.system:
        prompt.insert(0, {"role": "system", "content": args.system})
    kw = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "stop": args.stop,
    }
    start = time.perf_counter()
    if args.stream and not args.json:
        for piece in sm.stream(prompt, args.steer, **kw):
            print(piece, end="", flush=True)
        print()
        return 0
    g = sm.generate_detailed(prompt, args.steer, **kw)
    data = {
        "text": g.text,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "finish_reason": g.finish_reason,
        "steering": g.steering,
        "seconds": round(time.perf_counter() - start, 3),
    }
    _emit(args, data, g.text)
    return 0


def _read_pairs(path: str) -> list[tuple[str, str]]:
    """Pairs from JSON (``[[pos, neg], ...]`` or ``[{"positive", "negative"}]``) or JSONL."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    pairs = []
    for item in items:
        if isinstance(item, dict):
            pairs.append((str(item["positive"]), str(item["negative"])))
        else:
            pos, neg = item
            pairs.append((str(pos), str(neg)))
    return pairs


def cmd_extract(args: argparse.Namespace) -> int:
    from . import extract

    prompt = _template_source(args) if args.method in ("prompt_template", "distill") else ""
    sm = _model(args)
    layers = _layers(args.layers)
    start = time.perf_counter()
    if args.method in ("mean_diff", "pca"):
        if not args.pairs:
            raise ActsteerError(f"--method {args.method} needs --pairs FILE")
        fn = extract.mean_diff if args.method == "mean_diff" else extract.pca
        vec = fn(sm, _read_pairs(args.pairs), layers, progress=True)
    elif args.method == "actadd":
        if args.positive is None or args.negative is None:
            raise ActsteerError("--method actadd needs --positive and --negative")
        vec = extract.actadd(sm, args.positive, args.negative, layers)
    else:
        inputs = _read_lines(args.inputs) if args.inputs else None
        if args.method == "prompt_template":
            vec = extract.prompt_template(sm, prompt, inputs, layers, progress=True)
        else:
            vec = extract.distill(
                sm,
                prompt,
                inputs,
                layers,
                positions=args.positions,
                template=bool(args.template),
                test_inputs=_read_lines(args.test_inputs) if args.test_inputs else None,
                steps=args.steps,
                seed=args.seed,
                progress=True,
            )
    vec.save(args.output)
    data = {
        "output": args.output,
        "layers": list(vec.layers),
        "method": vec.meta.method,
        "seconds": round(time.perf_counter() - start, 3),
        "digest": vec.digest(),
    }
    text = f"wrote {args.output}: {vec!r} in {data['seconds']} s"
    card = vec.meta.extra.get("training")
    if card:
        data["training"] = card
        text += (
            f"\nfidelity to the prompt on {card['test_inputs']} held-out inputs: "
            f"{card['test_fidelity']:+.2f} (dev {card['dev_fidelity']:+.2f}); "
            f"{card['steps_run']} steps, best at {card['best_step']}, coefficient {card['coeff']:g}"
        )
    _emit(args, data, text)
    return 0


def _template_source(args: argparse.Namespace) -> str:
    """The system prompt (``--system``) or user template (``--template``, with ``{input}``)."""
    if bool(args.system_prompt) == bool(args.template):
        raise ActsteerError(
            f"--method {args.method} needs exactly one of --system TEXT or --template TEXT"
        )
    if args.template and "{input}" not in args.template:
        raise ActsteerError("--template must contain {input}, where each user message goes")
    return args.system_prompt or args.template


def _read_lines(path: str) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _load_any(path: str):
    from .vector import SteeringVector

    return (
        SteeringVector.from_gguf(path)
        if path.lower().endswith(".gguf")
        else SteeringVector.load(path)
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    vec = _load_any(args.file)
    meta = vec.meta.to_dict()
    meta.pop("source", None) if not args.full else None
    data = {
        "file": args.file,
        "layers": list(vec.layers),
        "hidden_size": vec.hidden_size,
        "norms": {str(k): round(v, 4) for k, v in vec.norms().items()},
        "digest": vec.digest(),
        "meta": meta,
    }
    lines = [repr(vec), f"digest {vec.digest()}"]
    norms = vec.meta.layer_norms
    for layer, n in vec.norms().items():
        ref = norms.get(layer)
        lines.append(
            f"  layer {layer:>3}: |d| = {n:.4f}"
            + (f"  ({n / ref:.3f}x typical {ref:.2f})" if ref else "")
        )
    if vec.meta.recommended_coeff is not None:
        lines.append(f"recommended coefficient {vec.meta.recommended_coeff:g}")
    card = vec.meta.extra.get("training")
    if isinstance(card, dict) and "test_fidelity" in card:
        lines.append(
            f"distilled from {vec.meta.source.get('system_prompt', '?')!r}: fidelity "
            f"{card['test_fidelity']:+.2f} on {card.get('test_inputs')} held-out inputs "
            f"(dev {card.get('dev_fidelity', float('nan')):+.2f}), positions "
            f"{card.get('positions')}, {card.get('steps_run')} steps, {card.get('time_s')} s"
        )
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    vec = _load_any(args.file)
    vec.to_gguf(args.gguf, model_hint=args.model_hint, keep_layer0=args.keep_layer0)
    _emit(args, {"output": args.gguf}, f"wrote {args.gguf} (llama.cpp --control-vector format)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .vector import SteeringVector

    vec = SteeringVector.from_gguf(args.file)
    if args.model or args.record_model:
        sm = _model(args)
        vec.check_model(sm.fingerprint)
        vec = vec.with_meta(model=sm.fingerprint, layer_norms=sm.activation_norms())
    vec.save(args.output)
    _emit(
        args, {"output": args.output, "layers": list(vec.layers)}, f"wrote {args.output}: {vec!r}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import presets
    from .data import neutral_inputs
    from .evaluate.report import evaluate

    sm = _model(args)
    prompts = neutral_inputs("heldout")[: args.prompts]
    check, instruction, fid = args.check, args.system_prompt, False
    if args.steer in presets.names():
        p = presets.get(args.steer)
        check = check or p.check
        instruction = instruction or p.prompt_equivalent
        fid = p.method in ("prompt_template", "distill")
    if not check:
        raise ActsteerError("--check is required unless --steer names a preset")
    report = evaluate(
        sm,
        args.steer,
        check=check,
        instruction=instruction,
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        with_fidelity=fid or args.fidelity,
    )
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown(), encoding="utf-8")
    _emit(args, report.to_dict(), report.table())
    return 0


def _sweep_source(args: argparse.Namespace):
    from . import presets

    if args.steer in presets.names():
        return args.steer, args.check or presets.get(args.steer).check
    if not args.steer.startswith("file:"):
        raise ActsteerError("--steer must be a preset name or file:PATH")
    if not args.check:
        raise ActsteerError("--check is required for a vector file")
    return _load_any(args.steer[5:]), args.check


def _sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from .data import neutral_inputs

    kw: dict[str, Any] = {
        "coeffs": [float(c) for c in args.coeffs.split(",")],
        "prompts": neutral_inputs("heldout")[: args.prompts],
        "max_new_tokens": args.max_new_tokens,
    }
    if args.layers:
        kw["layer_sets"] = [_layers(text) for text in args.layers]
    return kw


def cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .evaluate.sweep import plot_sweep, sweep

    sm = _model(args)
    source, check = _sweep_source(args)
    points = sweep(sm, source, check=check, **_sweep_kwargs(args))
    out = Path(args.output)
    data = {"steer": args.steer, "check": check, "points": [asdict(p) for p in points]}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    plot_sweep(points, out.with_suffix(".png"), title=f"{args.steer} on {sm.fingerprint.name}")
    lines = [f"{'layers':<12}{'coeff':>7}{'success':>9}{'ppl x':>8}"]
    for p in points:
        span = f"{p.layers[0]}-{p.layers[-1]}" if len(p.layers) > 1 else str(p.layers[0])
        lines.append(f"{span:<12}{p.coeff:>7g}{p.success_rate:>9.0%}{p.ppl_ratio:>8.2f}")
    lines.append(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluate.sweep import calibrate

    sm = _model(args)
    source, check = _sweep_source(args)
    vec, _ = calibrate(
        sm, source, check=check, max_ppl_ratio=args.max_ppl_ratio, **_sweep_kwargs(args)
    )
    vec.save(args.output)
    card = vec.meta.extra["steering_card"]
    text = (
        f"wrote {args.output}: layers {card['layers']}, coefficient {card['coeff']:g}, "
        f"success {card['success_rate']:.0%}, perplexity ratio {card['ppl_ratio']:.2f}"
    )
    _emit(args, card, text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    sm = _model(args)
    data = run_demo(sm, max_new_tokens=args.max_new_tokens, quiet=args.json)
    if args.json:
        print(json.dumps(data, indent=2))
    return 0


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
        "--steer", help='steering expression, e.g. "love:2 - formal" or "file:v.safetensors:2"'
    )
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message")
    p.add_argument("--system", help="system prompt (with --chat)")
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
    return parser


def _check_expression(text: str | None) -> None:
    """Fail fast, before loading any model: the expression parses and its presets exist."""
    if not text:
        return
    from . import presets
    from .expressions import parse

    for name in parse(text).names():
        presets.get(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show the long work; loading is quick
    try:
        _check_expression(getattr(args, "steer", None))
        return int(args.fn(args) or 0)
    except (ActsteerError, OSError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"actsteer: error: {first}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
