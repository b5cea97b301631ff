"""Generation helpers that keep calls independent: seeded per-row sampling, cancellation, stop
strings, and the incremental text buffer that makes streamed text equal non-streamed text."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Generation:
    """One completion with its accounting: text, token counts, why it ended, what steered it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    steering: str | None = None


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


class CancelCriteria(StoppingCriteria):
    """Stops rows whose cancel event is set (a cancelled task or an abandoned stream): one event
    for every row, or one per row when a batch merges independent requests. ``stopped_at`` maps
    each stopped row to its length when it stopped (generate pads the row after that)."""

    def __init__(self, event: threading.Event | Sequence[threading.Event]) -> None:
        self.events = [event] if isinstance(event, threading.Event) else list(event)
        self.stopped_at: dict[int, int] = {}

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw
    ) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        if len(self.events) == 1:
            flags = [self.events[0].is_set()] * rows
        else:
            flags = [e.is_set() for e in self.events]
        for row, flag in enumerate(flags):
            if flag:
                self.stopped_at.setdefault(row, input_ids.shape[1])
        return torch.tensor(flags, dtype=torch.bool)


class TokenQueue(BaseStreamer):
    """Receives new token ids from generate() (batch of one) and hands them to a consumer."""

    END = object()

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True  # generate() first sends the prompt itself
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(self.END)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def safe_length(text: str, stop: Sequence[str]) -> int:
    """How much of ``text`` can be emitted now: hold back a tail that might start a stop string
    or an unfinished multi-byte character."""
    n = len(text)
    while n and text[n - 1] == "\ufffd":
        n -= 1
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[n - k : n] == s[:k]:
                hold = max(hold, k)
                break
    return n - hold
