"""Finishing a grammar inside the token budget (forced tool calls).

A grammar makes each token valid, but it cannot make a reply *end*: a small model in a greedy
repetition loop inside a string argument writes until ``max_new_tokens`` and the call is cut.
For a row that must end well formed (a forced tool call), ``Closer`` plans the tokens that
complete its grammar from where it stands: the stop token once the grammar is complete, the
grammar's own forced text (``find_jump_forward_string``), else the first of a few closing
characters the grammar accepts (``"`` before ``}`` and ``]``: inside a string ``}`` is just a
character). The plan is tried on a fork of the row's matcher, so planning changes nothing;
``RowGrammars`` forces the plan once the budget left is no more than the plan plus
``MARGIN``. The reply then says ``finish_reason="length"``: its arguments may be cut short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Closing characters, most closing first; digits, ``t`` (true) and ``n`` (null) fill a value
#: the grammar requires, spaces and newlines a separator it requires. Where none fits (a
#: pattern, an enum), the grammar's first allowed token is taken.
CLOSERS = ('"', "}", "]", "0", "1", "[", "{", "t", "n", ",", ":", " ", "\n")

#: Extra tokens of budget kept in hand when the plan is forced: the token the model writes next
#: may lengthen the plan (an opened string or object) before it is planned again.
MARGIN = 3

#: Plans longer than this are not made (a deep schema with many required fields left to fill);
#: such a row is cut at the budget as before.
LIMIT = 128


class Closer:
    """Plans the completion of a row's grammar, for one tokenizer."""

    def __init__(
        self,
        decoded_vocab: Sequence[bytes],
        encode: Callable[[str], list[int]],
        stops: Sequence[int],
        vocab_size: int,
    ) -> None:
        single: dict[bytes, int] = {}
        for token, piece in enumerate(decoded_vocab):
            if len(piece) == 1 and token not in stops:
                single.setdefault(piece, token)
        self.bytes = single
        self.closers = [single[c.encode()] for c in CLOSERS if c.encode() in single]
        self.encode = encode
        self.stops = list(stops)
        self.vocab_size = vocab_size
        self._mask: torch.Tensor | None = None

    def plan(self, matcher: Any) -> list[int] | None:
        """Tokens that take ``matcher`` (untouched) to its end, or None if none is found."""
        m = matcher.fork()
        out: list[int] = []
        while len(out) <= LIMIT:
            if m.is_terminated():
                return out
            stop = next((s for s in self.stops if m.accept_token(s)), None)
            if stop is not None:
                return [*out, stop]
            forced = self._forced(m)
            if forced is not None:
                m, out = forced[0], out + forced[1]
                continue
            token = next((t for t in self.closers if m.accept_token(t)), None)
            if token is None:
                token = self._first_allowed(m)
                if token is None or not m.accept_token(token):
                    return None
            out.append(token)
        return None

    def _forced(self, matcher: Any) -> tuple[Any, list[int]] | None:
        """The grammar's forced text from here, as tokens it accepts (tokenised, else byte by
        byte), with a fork that accepted them; None when nothing is forced or it cannot be
        spelled."""
        text = matcher.find_jump_forward_string()
        if not text:
            return None
        for spelled in (self.encode(text), self._bytewise(text)):
            trial = matcher.fork()
            if spelled and all(trial.accept_token(t) for t in spelled):
                return trial, spelled
        return None

    def _first_allowed(self, matcher: Any) -> int | None:
        import xgrammar as xgr

        if self._mask is None:
            self._mask = xgr.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(self._mask, 0)
        bits = (self._mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[: self.vocab_size].nonzero().flatten().tolist()
        return next((t for t in allowed if t not in self.stops), None)

    def _bytewise(self, text: str) -> list[int]:
        spelled = [self.bytes.get(bytes([b])) for b in text.encode()]
        return [t for t in spelled if t is not None] if None not in spelled else []
