"""Constrained decoding in process: each row of a merged batch follows its own grammar, or none.

``Grammars`` compiles constraints for one tokenizer (xgrammar caches compiled grammars, so a
schema used by many calls compiles once). ``RowGrammars`` is the logits processor of one
generate: a ``GrammarMatcher`` per constrained row accepts the row's last token and writes the
row's allowed-token bitmask; unconstrained rows are not touched, so a constraint on one row
changes nothing in its neighbours. When a grammar is complete the only allowed tokens are the
model's end-of-sequence ids, so a constrained row ends exactly where its grammar does. A row
marked to close (tool calls) is finished inside ``max_new_tokens`` by ``budget.Closer``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from .budget import LIMIT, MARGIN, Closer
from .spec import Constraint, to_grammar


class Grammars:
    """Compiled grammars for one model's tokenizer and vocabulary (made on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids) or None
        )
        self.vocab_size = vocab_size
        self.closer = Closer(
            info.decoded_vocab,
            lambda text: tokenizer.encode(text, add_special_tokens=False),
            list(stop_ids),
            vocab_size,
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)
        self._lock = threading.Lock()
        self._compiled: dict[Constraint, Any] = {}

    def compile(self, constraint: Constraint) -> Any:
        """The ``CompiledGrammar`` for ``constraint`` (memoised)."""
        with self._lock:
            found = self._compiled.get(constraint)
            if found is None:
                grammar = to_grammar(constraint.kind, constraint.source)
                found = self._compiler.compile_grammar(grammar)
                if len(self._compiled) > 256:
                    self._compiled.clear()
                self._compiled[constraint] = found
            return found

    def processor(
        self,
        compiled: Sequence[Any | None],
        requests: Sequence[Any],
        prompt_len: int,
        budget: int,
        on_close: Callable[[int], None] | None = None,
    ) -> RowGrammars:
        """The logits processor for rows with these compiled grammars (one per request, or
        None): a request's tool calls (tools offered, no constraint of its own) are closed
        inside its ``budget`` of new tokens."""
        return RowGrammars(
            compiled, prompt_len, self.vocab_size, budget=budget, closer=self.closer,
            close=[r.constraint is None and bool(r.tools) for r in requests],
            on_close=on_close,
        )  # fmt: skip


class RowGrammars(LogitsProcessor):
    """Masks each constrained row's logits to the tokens its grammar allows next.

    Invariant: row ``r``'s matcher has accepted exactly the tokens row ``r`` generated so far.
    A token the matcher refuses can only follow the row's own end (generate pads an ended row),
    so that row is simply no longer constrained. Rows in ``close`` whose grammar is still open
    when ``budget`` new tokens are nearly spent are forced along ``closer``'s plan; ``closed``
    names them, and ``on_close(row)`` is told as forcing starts (before the row can end).
    """

    def __init__(
        self,
        compiled: Sequence[Any | None],
        prompt_len: int,
        vocab_size: int,
        *,
        budget: int | None = None,
        close: Sequence[bool] = (),
        closer: Closer | None = None,
        on_close: Callable[[int], None] | None = None,
    ) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in compiled]
        self.live = [i for i, m in enumerate(self.matchers) if m is not None]
        self.prompt_len = self.seen = prompt_len
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(len(self.matchers), vocab_size)
        self.budget, self.closer = budget, closer
        self.closing = {r for r, c in enumerate(close) if c} if budget and closer else set()
        self.forced: dict[int, list[int]] = {}
        self.closed: set[int] = set()
        self.recheck: dict[int, int] = {}
        """Per closing row, the budget left at which to plan again."""
        self.on_close = on_close

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.seen:
            new = input_ids[:, self.seen : length].tolist()
            self.seen = length
            for row in list(self.live):
                matcher = self.matchers[row]
                for token in new[row]:
                    if matcher.is_terminated() or not matcher.accept_token(token):
                        self.live.remove(row)  # the row ended; generate pads it
                        break
        rows = [r for r in self.live if not self.matchers[r].is_terminated()]
        if not rows:
            return scores
        self._plan(rows)
        masked = scores.float()  # the same tensor when already float32
        free = [r for r in rows if not self.forced.get(r)]
        if free:
            for row in free:
                self.matchers[row].fill_next_token_bitmask(self.bitmask, row)
            bitmask = self.bitmask.to(masked.device)  # a no-op on CPU
            self._xgr.apply_token_bitmask_inplace(
                masked, bitmask, vocab_size=min(self.vocab_size, masked.shape[-1]), indices=free
            )
        for row in rows:
            if self.forced.get(row):
                token = self.forced[row].pop(0)
                masked[row] = float("-inf")
                masked[row, token] = 0.0
        return masked

    def _plan(self, rows: Sequence[int]) -> None:
        """Start forcing each closing row whose plan (plus ``MARGIN``) fills the budget left."""
        left = (self.budget or 0) - (self.seen - self.prompt_len)
        if not self.closing or left > LIMIT + MARGIN:
            return
        assert self.closer is not None
        for row in rows:
            if row not in self.closing or row in self.forced or left > self.recheck.get(row, left):
                continue
            plan = self.closer.plan(self.matchers[row])
            # the stop token alone: the grammar is complete, and the row may end as it is
            complete = plan is not None and len(plan) == 1 and plan[0] in self.closer.stops
            if not plan or complete or len(plan) + MARGIN < left:
                # plan again when half the slack is spent: a token rarely lengthens a plan
                slack = left - (len(plan) if plan else 0) - MARGIN
                self.recheck[row] = left - 1 - max(slack - 1, 0) // 2
            else:
                self.forced[row] = plan
                self.closed.add(row)
                if self.on_close is not None:
                    self.on_close(row)
