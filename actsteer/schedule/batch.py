"""``RunningBatch``: the rows decoding together, their shared left-padded KV cache, and the hook
plan that steers each row at its own absolute positions.

Layout (the invariant every method keeps): the cache has ``width`` columns; row ``r`` holds
real tokens in columns ``starts[r] .. width-1``, its prompt in ``starts[r] .. prompt_ends[r]-1``
and its generated tokens after that; columns before ``starts[r]`` are padding, masked out. Each
decode step appends one column: every row feeds its last token there. A row that joins is
prefilled on its own (with its joiners), its cache left-padded to the batch's width (or the
batch's to its width) and concatenated; a row that leaves is dropped from the batch dimension,
and columns that are padding in every remaining row are cut. The hooks read the per-row
``starts`` and ``prompt_ends`` (``hooks.Plan``), so prompt, generated and ActAdd positions mean
exactly what they mean for the row alone."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..apply import hooks
from ..runtime.handle import ModelHandle
from .row import LiveRow


def cache_argument(model: torch.nn.Module) -> str | None:
    """What the model's forward calls its KV cache (``cache`` in transformers 5.25,
    ``past_key_values`` before), or None."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((a for a in ("cache", "past_key_values") if a in params), None)


def supports_joining(handle: ModelHandle) -> bool:
    """Whether rows can join and leave this model's batches: its forward takes position ids
    and a KV cache, and that cache is a plain ``DynamicCache`` of full-attention layers (whose
    key/value tensors can be padded, concatenated and sliced along the batch). Sliding-window,
    recurrent and other caches keep whole-batch ``generate``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    model = handle.model
    arg = cache_argument(model)
    try:
        takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if arg is None or not takes_positions:
        return False
    ids = torch.tensor([[handle.pad_token_id]], device=handle.device)
    try:  # the cache the model's own config asks for (sliding-window layers show up here)
        with torch.inference_mode():
            mask = torch.ones_like(ids)
            out = model(
                input_ids=ids, attention_mask=mask, use_cache=True, **{arg: _new_cache(model)}
            )
    except Exception:
        return False
    cache = out.get(arg)
    return type(cache) is DynamicCache and all(type(x) is DynamicLayer for x in cache.layers)


class RunningBatch:
    """Rows decoding together on one model (used on the generation thread only)."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.arg = cache_argument(handle.model) or "past_key_values"
        params = inspect.signature(handle.model.forward).parameters
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        """Only the last position's logits (as ``generate``): a prefill's full logits would be
        rows x prompt length x vocabulary."""
        self.rows: list[LiveRow] = []
        self.cache = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=handle.device)
        self.starts = torch.zeros(0, dtype=torch.long)
        self.prompt_ends = torch.zeros(0, dtype=torch.long)
        self._plan: hooks.Plan | None = None
        self._stale = True

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def prefill(self, rows: Sequence[LiveRow]) -> torch.Tensor:
        """Run the joining rows' prompts (left-padded together, steered as a generate of just
        them), add them to the batch, and return their next-token logits ``(n, vocab)``."""
        handle = self.handle
        ids, mask = handle.pad([r.prompt for r in rows])
        plan = handle.left_pad_plan([r.compiled for r in rows], mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {self.arg: _new_cache(handle.model), "use_cache": True, "position_ids": positions}
        kwargs.update(self.last_logits)
        with torch.inference_mode(), hooks.activate(hooks.CallState(plan) if plan else None):
            out = handle.model(input_ids=ids, attention_mask=mask, **kwargs)
        width = int(mask.shape[1])
        starts = (mask == 0).sum(dim=1).cpu()
        self._join(out.get(self.arg), mask, starts, torch.full_like(starts, width), rows)
        return out.logits[:, -1, :].float()

    def step(self) -> torch.Tensor:
        """One decode step: each row feeds its last token; returns the logits ``(B, vocab)``."""
        handle = self.handle
        device = handle.device
        tokens = torch.tensor([[r.new[-1]] for r in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor(
            [[len(r.prompt) + len(r.new) - 1] for r in self.rows], dtype=torch.long, device=device
        )
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        plan = self.plan()
        kwargs = {self.arg: self.cache, "use_cache": True, "position_ids": positions}
        kwargs.update(self.last_logits)
        with torch.inference_mode(), hooks.activate(hooks.CallState(plan) if plan else None):
            out = handle.model(input_ids=tokens, attention_mask=mask, **kwargs)
        self.cache = out.get(self.arg)
        self.mask = mask
        return out.logits[:, -1, :].float()

    def plan(self) -> hooks.Plan | None:
        """The hook plan of the current rows (rebuilt when rows join or leave)."""
        if self._stale:
            self._plan = self.handle.plan(
                [r.compiled for r in self.rows], self.prompt_ends.clone(), self.starts.clone()
            )
            self._stale = False
        return self._plan

    def keep(self, keep: Sequence[int]) -> None:
        """Keep only the rows at ``keep`` (others ended), cutting all-padding columns."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self._stale = True
        if not self.rows:
            self.cache = None
            self.mask = self.mask[:0, :0]
            self.starts, self.prompt_ends = self.starts[:0], self.prompt_ends[:0]
            return
        index = torch.tensor(list(keep), dtype=torch.long)
        self.starts, self.prompt_ends = self.starts[index], self.prompt_ends[index]
        cut = int(self.starts.min())
        self.mask = self.mask[index.to(self.mask.device), cut:]
        for layer in self.cache.layers:  # each layer where it lives (device_map="auto")
            here = index.to(layer.keys.device)
            layer.keys = layer.keys[here, :, cut:]
            layer.values = layer.values[here, :, cut:]
        self.starts, self.prompt_ends = self.starts - cut, self.prompt_ends - cut

    def _join(
        self,
        cache: object,
        mask: torch.Tensor,
        starts: torch.Tensor,
        prompt_ends: torch.Tensor,
        rows: Sequence[LiveRow],
    ) -> None:
        """Add prefilled rows (their cache, mask and columns) to the batch."""
        self._stale = True
        if not self.rows:
            self.cache, self.mask, self.starts, self.prompt_ends = cache, mask, starts, prompt_ends
            self.rows = list(rows)
            return
        width = max(self.width, int(mask.shape[1]))
        grow, pad = width - self.width, width - int(mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):  # type: ignore[attr-defined]
            mine.keys = torch.cat([_left(mine.keys, grow), _left(theirs.keys, pad)])
            mine.values = torch.cat([_left(mine.values, grow), _left(theirs.values, pad)])
        self.mask = torch.cat([F.pad(self.mask, (grow, 0)), F.pad(mask, (pad, 0))])
        self.starts = torch.cat([self.starts + grow, starts + pad])
        self.prompt_ends = torch.cat([self.prompt_ends + grow, prompt_ends + pad])
        self.rows += rows


def _new_cache(model: torch.nn.Module) -> object:
    """An empty ``DynamicCache`` laid out from the model's config (sliding-window layers, if
    any, get their own layer type: ``supports_joining`` then says no)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except Exception:  # a config the cache cannot read: the plain form
        return DynamicCache()


def _left(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(batch, heads, seq, dim)`` keys or values with ``n`` zero columns in front."""
    return F.pad(t, (0, 0, n, 0)) if n else t
