"""``LiveRow``: one request decoding inside a running batch. It chooses its own next token from
its own logits (its grammar's mask, then its own seeded sampler, else greedy), takes it (its
stream gets it at once), and knows when it has ended: end-of-sequence, its ``max_new_tokens``,
a stop string in its reply, or its call's cancel. Nothing in it depends on the other rows, so
a row decodes the same whichever rows share its steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..apply import combine
from ..constrain.decode import Grammars, RowGrammars
from ..engine import CallCancel, Generation, Request
from ..runtime import worker
from ..runtime.generation import RowStops, SeededSampler, TokenQueue
from ..runtime.handle import ModelHandle
from ..runtime.rows import finish


@dataclass(eq=False)
class LiveRow:
    """A request's decoding state: its prompt, steering, per-row processors and new tokens."""

    job: worker.Job
    slot: int
    """Its place among its job's rows."""
    request: Request
    prompt: list[int]
    compiled: combine.Compiled
    cancel: CallCancel
    dropped: int = 0
    stream: TokenQueue | None = None
    grammar: RowGrammars | None = None
    sampler: SeededSampler | None = None
    penalty: Any = None
    """The model's own ``repetition_penalty`` (its generation config), as ``generate``
    applies it before any processor of ours."""
    stops: RowStops | None = None
    eos: frozenset[int] = frozenset()
    new: list[int] = field(default_factory=list)
    ended: bool = False

    @classmethod
    def of(
        cls,
        handle: ModelHandle,
        grammars: Grammars | None,
        job: worker.Job,
        slot: int,
        compiled_grammar: Any | None,
        stream: TokenQueue | None,
    ) -> LiveRow:
        rows = job.payload
        request: Request = rows.requests[slot]
        options = request.options
        prompt = list(rows.encoded[slot])
        row = cls(
            job,
            slot,
            request,
            prompt,
            rows.compiled[slot],
            job.cancel,
            (rows.dropped or [0] * len(rows.requests))[slot],
            stream,
            eos=frozenset(handle.eos_token_ids),
        )
        if compiled_grammar is not None:
            assert grammars is not None
            row.grammar = grammars.processor(
                [compiled_grammar], [request], len(prompt), options.max_new_tokens,
                on_close=lambda _: stream is not None and setattr(stream, "closed", True),
            )  # fmt: skip
        penalty = getattr(
            getattr(handle.model, "generation_config", None), "repetition_penalty", None
        )
        if penalty not in (None, 1.0):
            from transformers import RepetitionPenaltyLogitsProcessor

            row.penalty = RepetitionPenaltyLogitsProcessor(penalty)
        if options.temperature > 0:
            row.sampler = SeededSampler(1, options.temperature, options.top_p, options.seed)
        if options.stop:
            row.stops = RowStops([job.cancel], (), options.stop, handle.tokenizer, len(prompt))
        return row

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's ``(vocab,)`` logits, as ``generate`` would pick it."""
        scores = logits[None, :]
        if self.grammar is not None or self.sampler is not None or self.penalty is not None:
            ids = torch.tensor([self.prompt + self.new], dtype=torch.long, device=logits.device)
            if self.penalty is not None:
                scores = self.penalty(ids, scores)
            if self.grammar is not None:  # masks first, then sampling
                scores = self.grammar(ids, scores)
            if self.sampler is not None:
                scores = self.sampler(ids, scores)
        return int(scores.argmax(dim=-1))

    def take(self, token: int) -> None:
        """Append ``token``; the row ends on EOS, at its token budget or at a stop string."""
        self.new.append(token)
        if self.stream is not None:
            self.stream.queue.put([token])
        if token in self.eos or len(self.new) >= self.request.options.max_new_tokens:
            self.ended = True
        elif self.stops is not None:
            ids = torch.tensor([self.prompt + self.new], dtype=torch.long)
            self.stops(ids, None)
            self.ended = bool(self.stops.stopped_at)
        if self.ended and self.stream is not None:
            self.stream.end_row()

    def finished(self, handle: ModelHandle) -> Generation:
        """The row's ``Generation`` (call it once the row has ended or been cancelled)."""
        closed = self.grammar is not None and 0 in self.grammar.closed
        return finish(
            handle, len(self.prompt), self.new, self.request, self.cancel,
            self.compiled[1], closed, self.dropped,
        )  # fmt: skip
