"""What each ``actsteer`` command does (``cli`` parses the arguments and reports errors)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ActsteerError

if TYPE_CHECKING:
    from ..runtime.model import SteeredModel


def load_model(args: argparse.Namespace) -> SteeredModel:
    """The model a command runs on: ``--model`` if given, else the embedded SmolLM2."""
    from ..runtime.model import SteeredModel

    if getattr(args, "model", None):
        return SteeredModel.from_pretrained(args.model)
    return SteeredModel.default()


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from ..core.expressions import parse

    expr = parse(f"x@{text}")
    return list(expr.terms[0].layers or ())


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_presets(args: argparse.Namespace) -> int:
    from .. import presets

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
    sm = load_model(args)
    chat = args.chat or bool(args.system)  # a system prompt implies a chat
    prompt: Any = [{"role": "user", "content": args.prompt}] if chat else args.prompt
    if args.system:
        prompt.insert(0, {"role": "system", "content": args.system})
    kw = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "stop": args.stop,
    }
    from .. import resolve

    steer = resolve.from_text(args.steer) if args.steer else None
    start = time.perf_counter()
    if args.stream and not args.json:
        for piece in sm.stream(prompt, steer, **kw):
            print(piece, end="", flush=True)
        print()
        return 0
    g = sm.generate_detailed(prompt, steer, **kw)
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
    from ..train import extract

    prompt = _template_source(args) if args.method in ("prompt_template", "distill") else ""
    sm = load_model(args)
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
    from ..core.vector import SteeringVector

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vec.to_gguf(args.gguf, model_hint=args.model_hint, keep_layer0=args.keep_layer0)
    for w in caught:  # one line each, without Python's source-line decoration
        print(f"actsteer: note: {w.message}", file=sys.stderr)
    _emit(args, {"output": args.gguf}, f"wrote {args.gguf} (llama.cpp --control-vector format)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..core.vector import SteeringVector

    vec = SteeringVector.from_gguf(args.file)
    if args.model or args.record_model:
        sm = load_model(args)
        vec.check_model(sm.fingerprint)
        vec = vec.with_meta(model=sm.fingerprint, layer_norms=sm.activation_norms())
    vec.save(args.output)
    _emit(
        args, {"output": args.output, "layers": list(vec.layers)}, f"wrote {args.output}: {vec!r}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import presets
    from ..data import neutral_inputs
    from ..evaluate.report import evaluate

    sm = load_model(args)
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
    from .. import presets

    if args.steer in presets.names():
        return args.steer, args.check or presets.get(args.steer).check
    if not args.steer.startswith("file:"):
        raise ActsteerError("--steer must be a preset name or file:PATH")
    if not args.check:
        raise ActsteerError("--check is required for a vector file")
    return _load_any(args.steer[5:]), args.check


def _sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import neutral_inputs

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

    from ..evaluate.sweep import plot_sweep, sweep

    sm = load_model(args)
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
    from ..evaluate.sweep import calibrate

    sm = load_model(args)
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
    from ..demo import run_demo

    sm = load_model(args)
    data = run_demo(sm, max_new_tokens=args.max_new_tokens, quiet=args.json)
    if args.json:
        print(json.dumps(data, indent=2))
    return 0
