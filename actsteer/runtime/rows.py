"""One left-padded Hugging Face ``generate`` of prepared rows (the local engine's batch on the
generation thread): the rows' hook plan active, their grammars and seeded sampling as logits
processors, per-row stops and streams; each row's ``Generation`` ends where the row ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..apply import combine, hooks
from ..constrain.decode import Grammars
from ..engine import CallCancel, Generation, Request
from .generation import RowStops, RowStreamer, SeededSampler, TokenQueue
from .handle import ModelHandle
from .replies import read_reply


@dataclass(eq=False)
class Rows:
    """One job's payload: its requests, and once prepared their token ids and steering."""

    requests: Sequence[Request]
    index: Sequence[int] = ()
    """Where each request stands in the call that made this job."""
    encoded: list[list[int]] | None = None
    dropped: list[int] | None = None
    """Prompt tokens each row left out to fit the window (``Request.truncate``)."""
    compiled: list[combine.Compiled] | None = None
    grammars: list[Any] | None = None
    """Each row's compiled grammar (its constraint, or its tool calls' structural tag), or None."""
    stream: TokenQueue | None = None


def generate_rows(
    handle: ModelHandle,
    compiled_grammars: Grammars | None,
    batch: Rows,
    cancels: list[CallCancel],
    streams: Sequence[tuple[int, TokenQueue]] = (),
) -> list[Generation]:
    """One left-padded generate of prepared rows (equal options). Each row's result ends
    where the row ended (EOS, stop string, cancel, its grammar), however long the batch
    went on."""
    encoded, compiled = batch.encoded or [], batch.compiled or []
    options = batch.requests[0].options
    ids, mask = handle.pad(encoded)
    plan = handle.left_pad_plan(compiled, mask)
    stops = RowStops(cancels, handle.eos_token_ids, options.stop, handle.tokenizer, ids.shape[1])
    config = GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=handle.pad_token_id,
        eos_token_id=list(handle.eos_token_ids) or None,
    )
    processors = LogitsProcessorList()
    grammars, streaming = None, dict(streams)
    if any(g is not None for g in batch.grammars or ()):  # masks first, then sampling
        assert compiled_grammars is not None
        grammars = compiled_grammars.processor(
            batch.grammars, batch.requests, ids.shape[1], options.max_new_tokens,
            on_close=lambda row: row in streaming and setattr(streaming[row], "closed", True),
        )  # fmt: skip
        processors.append(grammars)
    if options.temperature > 0:
        processors.append(
            SeededSampler(ids.shape[0], options.temperature, options.top_p, options.seed)
        )
    state = hooks.CallState(plan) if plan is not None else None
    with torch.inference_mode(), hooks.activate(state):
        out = handle.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([stops]),
            streamer=RowStreamer(streams, stops) if streams else None,
        )
    width, closed = out.shape[1], grammars.closed if grammars else set()
    return [
        finish(
            handle,
            len(tokens),
            out[row, ids.shape[1] : stops.stopped_at.get(row, width)].tolist(),
            batch.requests[row],
            cancels[row],
            compiled[row][1],
            row in closed,
            (batch.dropped or [0] * len(encoded))[row],
        )
        for row, tokens in enumerate(encoded)
    ]


def finish(
    handle: ModelHandle,
    prompt_tokens: int,
    new: Sequence[int],
    request: Request,
    cancel: CallCancel,
    steering: str | None,
    closed: bool = False,
    truncated: int = 0,
) -> Generation:
    """The ``Generation`` of a row that ended with ``new`` tokens (``replies.read_reply``)."""
    return read_reply(
        handle.tokenizer, handle.eos_token_ids, request, prompt_tokens, new,
        cancelled=cancel.is_set(), steering=steering, closed=closed, truncated=truncated,
    )  # fmt: skip
