"""Where vectors come from: contrastive reads of a model's own activations.

Every method reads unsteered hidden states through ``SteeredModel.hidden_states`` (batched,
left-padded, padding-aware, stopping after the deepest layer read, so a batch gives the same
vector as one-by-one reads) and returns a ``SteeringVector`` whose metadata records the method,
its inputs (and their hash), the model fingerprint and each layer's typical activation norm.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Literal

import torch

from ..core.vector import SteeringVector, VectorMeta
from ..data import neutral_inputs
from ..errors import SteeringSpecError
from ..prompts import Prompt
from ..runtime import worker
from ..runtime.generation import CallCancel
from .distill import fidelity as _fidelity
from .distill import loop as _distill
from .distill import teacher as _teacher

if TYPE_CHECKING:
    from ..runtime.model import SteeredModel

Read = Literal["last", "mean"]


def _pooled(states: list[torch.Tensor], read: Read) -> torch.Tensor:
    """One vector per prompt: its last token, or the mean over its tokens after the first (the
    first token of a sequence is an attention sink with outsized activations)."""
    if read == "last":
        return torch.stack([h[-1] for h in states])
    if read == "mean":
        return torch.stack([(h[1:] if h.shape[0] > 1 else h).mean(0) for h in states])
    raise SteeringSpecError(f"read must be 'last' or 'mean', got {read!r}")


def _layers(sm: SteeredModel, layers: Iterable[int] | None) -> list[int]:
    chosen = sorted(set(layers)) if layers is not None else list(range(sm.num_layers))
    if not chosen:
        raise SteeringSpecError("no layers to extract")
    return chosen


def _meta(sm: SteeredModel, method: str, source: dict, layers: list[int]) -> VectorMeta:
    norms = sm.activation_norms()
    blob = json.dumps(source, sort_keys=True, default=str).encode()
    source = dict(source, sha256=hashlib.sha256(blob).hexdigest()[:16])
    return VectorMeta(
        model=sm.fingerprint,
        method=method,
        source=source,
        layer_norms={layer: norms[layer] for layer in layers},
    )


def _check_pairs(pairs: Sequence[tuple[Prompt, Prompt]], method: str) -> None:
    if not pairs:
        raise SteeringSpecError(f"{method} needs at least one (positive, negative) pair")
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise SteeringSpecError(
                f"{method}: each pair must be (positive, negative), got {pair!r}"
            )


@worker.on_worker
def pair_differences(
    sm: SteeredModel,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "mean",
    batch_size: int = 32,
    progress: bool | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: (pairs, hidden)}`` of pooled ``act(positive) - act(negative)``."""
    chosen = _layers(sm, layers)
    prompts = [p for p, _ in pairs] + [n for _, n in pairs]
    states = sm.hidden_states(prompts, chosen, batch_size=batch_size, progress=progress)
    n = len(pairs)
    return {
        layer: _pooled(states[layer][:n], read) - _pooled(states[layer][n:], read)
        for layer in chosen
    }


@worker.on_worker
def mean_diff(
    sm: SteeredModel,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "mean",
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """Contrastive mean difference (CAA, Rimsky et al. 2023): the mean over pairs of
    ``act(positive) - act(negative)``, read at the last token or averaged over tokens."""
    _check_pairs(pairs, "mean_diff")
    diffs = pair_differences(sm, pairs, layers, read=read, batch_size=batch_size, progress=progress)
    directions = {layer: d.mean(0) for layer, d in diffs.items()}
    source = {"pairs": [[str(p), str(n)] for p, n in pairs], "read": read}
    return SteeringVector(directions, _meta(sm, "mean_diff", source, sorted(diffs)))


@worker.on_worker
def pca(
    sm: SteeredModel,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "last",
    center: bool = False,
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """First principal component of the pair differences (RepE / repeng ``pca_diff``).

    The sign is fixed so that positives project higher than their negatives for most pairs; the
    direction is scaled to the mean projection of the differences, so its magnitude matches a
    mean-difference vector's. ``center=True`` subtracts the mean difference first, as repeng's
    sklearn PCA does; the default (uncentered) also works for a single pair.
    """
    _check_pairs(pairs, "pca")
    diffs = pair_differences(sm, pairs, layers, read=read, batch_size=batch_size, progress=progress)
    directions = {}
    for layer, d in diffs.items():
        x = d.double()
        if center:
            x = x - x.mean(0, keepdim=True)
        if not bool(x.abs().sum() > 0):
            raise SteeringSpecError(f"layer {layer}: all pair differences are zero")
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        direction = vh[0]
        proj = d.double() @ direction
        if (proj > 0).double().mean() < 0.5 or (
            (proj > 0).double().mean() == 0.5 and proj.sum() < 0
        ):
            direction, proj = -direction, -proj
        directions[layer] = (direction * proj.abs().mean()).float()
    source = {"pairs": [[str(p), str(n)] for p, n in pairs], "read": read, "center": center}
    return SteeringVector(directions, _meta(sm, "pca", source, sorted(diffs)))


@worker.on_worker
def actadd(
    sm: SteeredModel,
    positive: Prompt,
    negative: Prompt,
    layers: Iterable[int] | None = None,
    *,
    form: Literal["mean", "positional"] = "mean",
    read: Read = "mean",
) -> SteeringVector:
    """ActAdd (Turner et al. 2023) from one prompt pair, e.g. ``actadd(sm, "Love", "Hate")``.

    ``form="mean"`` pools each prompt (a vector for any positions). ``form="positional"`` keeps
    the per-position difference ``(tokens, hidden)``, the paper's original variant: apply it with
    ``Steering(v, positions="actadd")`` to add it to the first tokens of the prompt. The shorter
    prompt is right-padded with space tokens, as the paper's code does.
    """
    if form == "mean":
        vec = mean_diff(sm, [(positive, negative)], layers, read=read)
        return SteeringVector(vec.directions, replace(vec.meta, method="actadd"))
    if form != "positional":
        raise SteeringSpecError(f"form must be 'mean' or 'positional', got {form!r}")
    chosen = _layers(sm, layers)
    pos, neg = sm.encode(positive), sm.encode(negative)
    space = sm.tokenizer(" ", add_special_tokens=False)["input_ids"] or [sm.pad_token_id]
    width = max(len(pos), len(neg))
    pos = pos + space[-1:] * (width - len(pos))
    neg = neg + space[-1:] * (width - len(neg))
    states = sm.hidden_states_of_ids([pos, neg], chosen)
    directions = {layer: states[layer][0] - states[layer][1] for layer in chosen}
    source = {"positive": str(positive), "negative": str(negative), "form": form}
    return SteeringVector(directions, _meta(sm, "actadd", source, chosen))


@worker.on_worker
def prompt_template(
    sm: SteeredModel,
    system_prompt: str,
    inputs: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    *,
    read: Literal["suffix", "last"] = "suffix",
    batch_size: int = 16,
    progress: bool | None = None,
) -> SteeringVector:
    """Compile a system prompt (or a user-prompt template containing ``{input}``) into a vector.

    For each user input, the *with* side is the chat the deployment would send with the system
    prompt (or with the input placed into the template), the *without* side exactly what a call
    without it sends (through the same chat template, including any default system prompt the
    template inserts). The vector is the mean difference of hidden states over the tokens both
    sides share at their end (the user turn and the assistant header), or only the last token.
    """
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise SteeringSpecError("prompt_template needs a non-empty system prompt or template")
    inputs = list(inputs) if inputs is not None else neutral_inputs("train")
    if not inputs:
        raise SteeringSpecError("prompt_template needs at least one user input")
    chosen = _layers(sm, layers)
    is_template = "{input}" in system_prompt
    with_side, without_side = _teacher.chats(system_prompt, inputs, is_template)
    with_ids = [sm.encode(m) for m in with_side]
    without_ids = [sm.encode(m) for m in without_side]
    states = sm.hidden_states_of_ids(
        with_ids + without_ids, chosen, batch_size=batch_size, progress=progress
    )
    n = len(inputs)
    directions = {}
    for layer in chosen:
        diffs = []
        for i in range(n):
            a, b = states[layer][i], states[layer][n + i]
            k = 1 if read == "last" else _common_suffix(with_ids[i], without_ids[i])
            if k == 0:
                raise SteeringSpecError(
                    "with and without the prompt share no final tokens; use read='last'"
                )
            diffs.append((a[-k:] - b[-k:]).mean(0))
        directions[layer] = torch.stack(diffs).mean(0)
    source = {
        "system_prompt": system_prompt,
        "template": is_template,
        "inputs": len(inputs),
        "inputs_sha256": hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:16],
        "read": read,
        "prompt_tokens_saved": sum(len(a) - len(b) for a, b in zip(with_ids, without_ids)) / n,
    }
    meta = replace(_meta(sm, "prompt_template", source, chosen), recommended_coeff=1.0)
    return SteeringVector(directions, meta)


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    return k


def distill(
    sm: SteeredModel,
    system_prompt: str,
    inputs: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    *,
    positions: str = "all",
    template: bool | None = None,
    test_inputs: Sequence[str] | None = None,
    steps: int = 70,
    lr: float = 0.005,
    batch_size: int = 6,
    max_new_tokens: int = 24,
    norm_penalty: float = 1.0,
    seed: int = 0,
    progress: bool | None = None,
    cancel: threading.Event | None = None,
    **config: object,
) -> SteeringVector:
    """Compile a system prompt (or a user template containing ``{input}``) into per-layer vectors
    by context distillation: the vectors are trained so that the model *without* the prompt,
    steered by them at ``positions``, predicts what the model *with* the prompt predicts on its
    own replies (see ``actsteer.train.distill.loop``).

    ``inputs`` (default: the 200 shipped neutral messages) are split, with ``seed``, into
    training and dev sets (dev: early stopping and the coefficient, which is baked into the
    vector); the reported test fidelity uses ``test_inputs`` (default: the 48 held-out shipped
    messages, or 15 % of ``inputs`` when you pass your own), never seen in training. ``layers``
    default to every layer but 0, which llama.cpp never steers. More settings (``top_k``,
    ``first_weight``, ``eval_every``, ``patience``, ``coeffs``, ``schedule``, ``init``) are those of
    ``actsteer.train.distill.loop.DistillConfig``. The vector's metadata carries a training card
    (``meta.extra["training"]``): settings, steps, losses, dev and test fidelity, positions,
    time. Runs on the generation thread (other calls wait); ``cancel`` (or an interrupt of the
    waiting caller) stops it between steps with ``DistillationError``, and nothing is returned
    or cached.
    """
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise SteeringSpecError("distill needs a non-empty system prompt or template")
    if template is None:
        template = "{input}" in system_prompt
    elif template and "{input}" not in system_prompt:
        raise SteeringSpecError(
            "a prompt template must contain {input}, where each user message goes"
        )
    if positions not in _distill.POSITIONS:
        raise SteeringSpecError(
            f"distill trains for positions {_distill.POSITIONS}, got {positions!r}"
        )
    cfg = _distill.config(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        norm_penalty=norm_penalty,
        seed=seed,
        **config,
    )
    chosen = _layers(sm, layers if layers is not None else range(1, sm.num_layers))
    train_in, dev_in, test_in = _splits(inputs, test_inputs, seed)
    flag = CallCancel(cancel)
    job = functools.partial(
        _run_distill,
        sm,
        system_prompt,
        template,
        chosen,
        positions,
        cfg,
        (train_in, dev_in, test_in),
        progress,
        flag,
    )
    return worker.call(job, cancel=flag)


def _splits(
    inputs: Sequence[str] | None, test_inputs: Sequence[str] | None, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Training, dev and test inputs: a seeded shuffle, 15 % (1 to 16) for dev, and for test the
    given ``test_inputs``, the shipped held-out messages, or 15 % (1 to 32) of ``inputs``."""
    pool = list(inputs) if inputs is not None else neutral_inputs("train")
    if not all(isinstance(x, str) and x.strip() for x in pool):
        raise SteeringSpecError("distill inputs must be non-empty strings")
    random.Random(seed).shuffle(pool)
    if test_inputs is not None:
        test = list(test_inputs)
    elif inputs is None:
        test = neutral_inputs("heldout")
    else:
        k = min(32, max(1, round(0.15 * len(pool))))
        test, pool = pool[:k], pool[k:]
    k = min(16, max(1, round(0.15 * len(pool))))
    dev, train = pool[:k], pool[k:]
    if len(train) < 2 or not test:
        raise SteeringSpecError(
            f"distill needs at least 2 training, 1 dev and 1 test input; got {len(inputs or [])} "
            "inputs (they are split into train / dev / test)"
        )
    return train, dev, test


def _run_distill(sm, system_prompt, template, layers, positions, cfg, splits, progress, cancel):
    start = time.perf_counter()
    train_in, dev_in, test_in = splits
    examples = _teacher.teacher_examples(
        sm,
        system_prompt,
        [*train_in, *dev_in, *test_in],
        template=template,
        max_new_tokens=cfg.max_new_tokens,
        top_k=cfg.top_k,
    )
    train_ex = examples[: len(train_in)]
    dev_ex = examples[len(train_in) : len(train_in) + len(dev_in)]
    test_ex = examples[len(train_in) + len(dev_in) :]
    if cfg.init == "mean_diff":  # spread over the layers: additions accumulate downstream
        md = prompt_template(sm, system_prompt, train_in, layers, progress=False).directions
        init = {x: d / len(layers) for x, d in md.items()}
    else:
        init = {x: torch.zeros(sm.hidden_size) for x in layers}
    trained = _distill.train(
        sm,
        train_ex,
        dev_ex,
        layers,
        init,
        cfg,
        positions=positions,
        progress=progress,
        cancel=cancel,
    )
    row = _distill.vector_row(trained.vectors, positions)
    test_fid = _fidelity.fidelity_of(sm, test_ex, row)
    inputs_hash = hashlib.sha256("\n".join([*train_in, *dev_in]).encode()).hexdigest()[:16]
    dev_fidelity = 1.0 - trained.dev_kl / trained.dev_kl_none if trained.dev_kl_none else 0.0
    card = {
        "method": "distill",
        "positions": positions,
        "inputs_sha256": inputs_hash,
        "train_inputs": len(train_in),
        "dev_inputs": len(dev_in),
        "test_inputs": len(test_in),
        **asdict(cfg),
        "steps_run": trained.steps_run,
        "best_step": trained.best_step,
        "coeff": trained.coeff,
        "coeff_dev_kl": trained.coeff_dev_kl,
        "history": list(trained.history),
        "dev_fidelity": dev_fidelity,
        "test_fidelity": test_fid.removed,
        "test_kl_none": test_fid.kl_none,
        "test_kl": test_fid.kl_vector,
        "time_s": _distill.elapsed(start),
        "torch_threads": torch.get_num_threads(),
    }
    with_ids = [e.teacher for e in examples]
    without_ids = [e.student for e in examples]
    source = {
        "system_prompt": system_prompt,
        "template": template,
        "inputs": len(train_in) + len(dev_in),
        "inputs_sha256": inputs_hash,
        "prompt_tokens_saved": sum(len(a) - len(b) for a, b in zip(with_ids, without_ids))
        / len(examples),
    }
    meta = _meta(sm, "distill", source, layers)
    meta = replace(meta, recommended_coeff=1.0, extra={"training": card})
    return SteeringVector(trained.vectors, meta)
