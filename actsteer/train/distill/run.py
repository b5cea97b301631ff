"""``distill``: the entry point of context distillation. It splits the inputs, has the
prompted model (the teacher) answer them, trains the vectors (``loop``), measures held-out
fidelity, and writes the training card into the vector's metadata."""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import torch

from ...core.distill_config import config as distill_config
from ...core.steering import TRAINED_POSITIONS
from ...core.vector import SteeringVector
from ...data import neutral_inputs
from ...engine import CallCancel
from ...errors import SteeringSpecError
from ...runtime import worker
from ..common import check_fits, chosen_layers, vector_meta
from ..template import prompt_template
from . import fidelity as _fidelity
from . import loop as _distill
from . import teacher as _teacher

if TYPE_CHECKING:
    from ...runtime.surface import Steerable


def distill(
    sm: Steerable,
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
    ``first_weight``, ``eval_every``, ``patience``, ``coeffs``, ``schedule``, ``init``, ``stack``,
    ``select``) are those of ``actsteer.core.distill_config.DistillConfig``. The vector's
    metadata carries a training card (``meta.extra["training"]``): settings, steps, losses, dev
    and test fidelity, positions, time. Runs on the generation thread (other calls wait);
    ``cancel`` (or an interrupt of the waiting caller) stops it between steps with
    ``DistillationError``, and nothing is returned or cached.
    """
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise SteeringSpecError("distill needs a non-empty system prompt or template")
    if template is None:
        template = "{input}" in system_prompt
    elif template and "{input}" not in system_prompt:
        raise SteeringSpecError(
            "a prompt template must contain {input}, where each user message goes"
        )
    if positions not in TRAINED_POSITIONS:
        raise SteeringSpecError(
            f"distill trains for positions {TRAINED_POSITIONS}, got {positions!r}"
        )
    cfg = distill_config(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        norm_penalty=norm_penalty,
        seed=seed,
        **config,
    )
    chosen = chosen_layers(sm, layers if layers is not None else range(1, sm.num_layers))
    train_in, dev_in, test_in = _splits(inputs, test_inputs, seed)
    with_prompt, _ = _teacher.chats(system_prompt, [*train_in, *dev_in, *test_in], template)
    check_fits(sm, "distill", max(len(sm.encode(c)) for c in with_prompt), cfg.max_new_tokens)
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
    # on top of its own prompt: KL(prompted || prompted and steered), 0 for a harmless vector
    on_top = _fidelity.fidelity_of(sm, _distill.stacked(test_ex), row)
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
        "coeff_dev_stack_kl": trained.coeff_dev_stack_kl,
        "history": list(trained.history),
        "dev_fidelity": dev_fidelity,
        "test_fidelity": test_fid.removed,
        "test_kl_none": test_fid.kl_none,
        "test_kl": test_fid.kl_vector,
        "dev_stack_kl": trained.dev_stack_kl,
        "test_stack_kl": on_top.kl_vector,
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
    meta = vector_meta(sm, "distill", source, layers)
    meta = replace(meta, recommended_coeff=1.0, extra={"training": card})
    return SteeringVector(trained.vectors, meta)
