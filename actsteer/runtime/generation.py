"""Hugging Face generation helpers that keep calls independent: seeded per-row sampling,
cancellation, stop strings, and the incremental text buffer that makes streamed text equal
non-streamed text. The values they fill in (``Generation``, ``CallCancel``) are in ``engine``."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.generation.streamers import BaseStreamer

from ..engine import CallCancel


class SeededSampler(LogitsProcessor):
    """Temperature / top-p sampling with a private generator per row.

    generate() runs greedy; this processor samples each row with its own ``torch.Generator`` and
    leaves only the chosen token finite. A seed then fixes a call's output regardless of other
    threads using the global RNG, and a batch row samples exactly as the same prompt alone.
    """

    def __init__(self, batch: int, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generators = []
        for _ in range(batch):
            g = torch.Generator()
            if seed is None:
                g.seed()
            else:
                g.manual_seed(seed)
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        chosen = [
            int(torch.multinomial(probs[i], 1, generator=g)) for i, g in enumerate(self.generators)
        ]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), torch.tensor(chosen)] = 0.0
        return out


class RowStops(StoppingCriteria):
    """Stops each row on its own: when its call is cancelled, or (for merged rows, whose batch
    goes on) records where the row ended by EOS or a stop string. ``stopped_at`` maps each
    ended row to its length at that step; generate() pads the row after it (or, without EOS
    ids, keeps generating), so results and streams are cut there."""

    def __init__(
        self,
        cancels: Sequence[CallCancel | threading.Event],
        eos_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        tokenizer=None,
        prompt_len: int | None = None,
    ) -> None:
        self.cancels = list(cancels)
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.stop, self.tokenizer, self.prompt_len = list(stop), tokenizer, prompt_len
        self.strings = _stop_strings(tokenizer, tuple(stop)) if stop else None
        self.stopped_at: dict[int, int] = {}

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw
    ) -> torch.BoolTensor:
        rows, length = input_ids.shape
        shared = self.cancels[0] if len(self.cancels) == 1 else None
        if shared is not None:
            cancelled = torch.full((rows,), shared.is_set(), dtype=torch.bool)
        else:
            cancelled = torch.tensor([c.is_set() for c in self.cancels], dtype=torch.bool)
        ended = cancelled.clone()
        if self.eos.numel():
            ended |= torch.isin(input_ids[:, -1].cpu(), self.eos)
        hit = None
        if self.strings is not None:
            hit = self.strings(input_ids, scores).cpu()
            if self.prompt_len is not None:  # a match must lie in the reply (it may span the
                for row in hit.nonzero().flatten().tolist():  # prompt's end: not a stop)
                    reply = self.tokenizer.decode(input_ids[row, self.prompt_len :].tolist())
                    hit[row] = any(s in reply for s in self.stop)
            ended |= hit
        for row in ended.nonzero().flatten().tolist():
            self.stopped_at.setdefault(row, length)
        stop = cancelled if hit is None else cancelled | hit  # EOS is generate()'s own check
        return stop.to(input_ids.device)


_STOP_STRINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stop_strings(tokenizer, stop: tuple[str, ...]) -> StopStringCriteria:
    """transformers' stop-string matcher for ``stop`` (built once per tokenizer and stop
    strings: it reads and hashes the whole vocabulary, which every joining row would redo).
    Its call reads only its arguments, so rows share one."""
    per_tokenizer = _STOP_STRINGS.setdefault(tokenizer, {})
    found = per_tokenizer.get(stop)
    if found is None:
        if len(per_tokenizer) > 64:
            per_tokenizer.clear()
        found = per_tokenizer[stop] = StopStringCriteria(tokenizer=tokenizer, stop_strings=stop)
    return found


class TokenQueue:
    """One streaming row's tokens, handed from the generation thread (``RowStreamer``) to the
    consumer, then ``END``."""

    END = object()

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.row_done = False
        """Set when the row ended (EOS, stop string, cancel) while its batch may go on."""
        self.closed = False
        """Set before the end when the row's tool call was finished by the token budget."""

    def end(self) -> None:
        self.queue.put(self.END)

    def end_row(self) -> None:
        """The row is complete: the consumer may finish without waiting for the batch."""
        self.row_done = True
        self.queue.put(self.END)


class RowStreamer(BaseStreamer):
    """A generate() streamer for a batch with streaming rows: hands each its own tokens, up to
    and including the token where ``stops`` recorded the row's end, then ends that stream."""

    def __init__(self, streams: Sequence[tuple[int, TokenQueue]], stops: RowStops) -> None:
        self.streams = list(streams)
        self.stops = stops
        self.length: int | None = None

    def put(self, value: torch.Tensor) -> None:
        if self.length is None:  # generate() first sends the prompt itself
            self.length = int(value.shape[-1])
            return
        self.length += 1
        tokens = value.reshape(-1).tolist()
        for row, stream in self.streams:
            if stream.row_done:
                continue
            stream.queue.put([tokens[row]])
            end = self.stops.stopped_at.get(row)
            if end is not None and end <= self.length:
                stream.end_row()

    def end(self) -> None:
        """Streams still open end when the generate returns or fails (see ``worker``)."""


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def safe_length(text: str, stop: Sequence[str]) -> int:
    """How much of ``text`` can be emitted now: hold back a tail that might start a stop string
    (an unfinished multi-byte character is already left out of ``text``, see
    ``runtime.replies.decode_reply``)."""
    n = len(text)
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[n - k : n] == s[:k]:
                hold = max(hold, k)
                break
    return n - hold
