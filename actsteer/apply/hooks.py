"""The hook machinery: one forward hook per decoder layer, reading a per-call plan from a
ContextVar.

This is the only module with mutable steering state. Invariants it keeps (each pinned by a test):

* Hooks are installed once per model. With no active call state they return at once, so an
  unsteered call pays one ``ContextVar.get`` per layer.
* The state is per call: it lives in ``_ACTIVE`` (a ``contextvars.ContextVar``) for the duration
  of one generate (on actsteer's generation thread, see ``worker``; ``SteeredModel.steer`` sets it
  in the caller's own thread). Two threads never see each other's steering, and nothing survives
  an exception or a cancelled stream.
* Positions are absolute: a pre-hook on the decoder stack derives each chunk's offset from the
  full 2-D attention mask (or the cache length), so steering stays correct under the KV cache,
  chunked prefill and left padding. Pad positions are never steered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError
from . import interventions

#: Operators run in this order inside a layer: remove, then add, then norm-preserving add.
_OP_ORDER = {"ablate": 0, "add": 1, "add_norm_preserving": 2}

RowSpec = Mapping[tuple[str, str], tuple[Mapping[int, torch.Tensor], float]]
"""One batch row: ``{(positions, operator): ({layer: tensor}, strength)}``."""


class StopForward(Exception):
    """Raised by a hook after the deepest captured layer, to skip the rest of the forward."""


@dataclass(frozen=True)
class LayerOp:
    """One operator at one layer for the whole batch; rows without it carry zeros."""

    positions: str
    operator: str
    tensor: torch.Tensor  # add: (B, H) or actadd (B, n, H); ablate: (B, k, H) orthonormal
    strength: torch.Tensor  # (B, 1, 1): ablation strength, 1 for add rows, 0 for rows without

    def apply(self, h: torch.Tensor, state: CallState) -> torch.Tensor:
        mask = state.masks.get(self.positions)
        if mask is None:
            return h
        mask = mask.to(device=h.device, dtype=h.dtype)
        tensor = self.tensor.to(device=h.device, dtype=h.dtype)
        if self.operator == "ablate":
            return interventions.ablate(h, tensor, mask * self.strength.to(h))
        if self.positions == "actadd":  # this op's own positions: rel < its length
            rel = state.rel.to(h.device)
            n = tensor.shape[1]
            index = rel.clamp(0, n - 1)
            if tensor.shape[0] == 1:  # a one-row plan steers every row alike (teacher forcing)
                delta = tensor[0][index]
            else:
                delta = tensor[torch.arange(h.shape[0], device=h.device)[:, None], index]
            mask = mask * (rel < n).unsqueeze(-1).to(mask.dtype)
        else:
            delta = tensor[:, None, :]
        if self.operator == "add":
            return interventions.add(h, mask * delta)
        active = ((mask * self.strength.to(h)) > 0) & (delta != 0).any(-1, keepdim=True)
        return torch.where(active, interventions.add_norm_preserving(h, mask * delta), h)


@dataclass(frozen=True)
class Plan:
    """Everything the hooks apply during one call, per layer, pre-combined across vectors."""

    layers: Mapping[int, tuple[LayerOp, ...]]
    batch_size: int
    prompt_len: int | torch.Tensor | None = None
    """Where the prompt ends: one column for the batch, or ``(B,)`` columns, one per row (rows
    that joined a running batch at different steps, ``actsteer.schedule``)."""
    starts: torch.Tensor | None = None  # (B,) index of each row's first real prompt token
    descriptions: tuple[str, ...] = ()

    @property
    def modes(self) -> frozenset[str]:
        return frozenset(op.positions for ops in self.layers.values() for op in ops)

    @classmethod
    def build(
        cls,
        rows: Sequence[RowSpec],
        *,
        prompt_len: int | torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        descriptions: Sequence[str] = (),
    ) -> Plan | None:
        """Stack per-row specs into batch tensors; None when no row steers anything."""
        batch = len(rows)
        keys = sorted(
            {(key, layer) for row in rows for key, (deltas, _) in row.items() for layer in deltas},
            key=lambda kl: (kl[1], _OP_ORDER[kl[0][1]], kl[0][0]),
        )
        if not keys:
            return None
        layers: dict[int, list[LayerOp]] = {}
        for (positions, operator), layer in keys:
            per_row, strengths = [], []
            for row in rows:
                deltas, strength = row.get((positions, operator), ({}, 0.0))
                t = deltas.get(layer)
                per_row.append(t)
                strengths.append(strength if t is not None else 0.0)
            tensor = _stack_rows(per_row, operator, positional=positions == "actadd")
            strength = torch.tensor(strengths, dtype=torch.float32).view(batch, 1, 1)
            op = LayerOp(positions, operator, tensor, strength)
            layers.setdefault(layer, []).append(op)
        return cls(
            layers={k: tuple(v) for k, v in sorted(layers.items())},
            batch_size=batch,
            prompt_len=prompt_len,
            starts=starts,
            descriptions=tuple(descriptions),
        )

    def to(self, devices: Mapping[int, torch.device], dtypes: Mapping[int, torch.dtype]) -> Plan:
        """The same plan with each layer's tensors moved to that layer's device and dtype once."""
        moved = {
            layer: tuple(
                LayerOp(
                    op.positions,
                    op.operator,
                    op.tensor.to(devices[layer], dtypes[layer]),
                    op.strength.to(devices[layer], dtypes[layer]),
                )
                for op in ops
            )
            for layer, ops in self.layers.items()
        }
        return Plan(moved, self.batch_size, self.prompt_len, self.starts, self.descriptions)

    def explain(self) -> str:
        """Which operators run at which layers, for how many rows."""
        lines = [f"Plan for {self.batch_size} row(s), prompt length {self.prompt_len}:"]
        for i, d in enumerate(self.descriptions):
            lines.append(f"  row {i}: {d or 'no steering'}")
        for layer, ops in self.layers.items():
            for op in ops:
                rows = int((op.strength.view(-1) != 0).sum())
                lines.append(
                    f"  layer {layer:>3}: {op.operator:<19} positions={op.positions:<9} "
                    f"rows={rows} max|delta|={float(op.tensor.norm(dim=-1).max()):.3f}"
                )
        return "\n".join(lines)


def _stack_rows(
    per_row: Sequence[torch.Tensor | None], operator: str, *, positional: bool = False
) -> torch.Tensor:
    """Rows' tensors as one batch tensor, zeros for rows without: ``(B, H)`` deltas, or
    ``(B, n, H)`` for ablation bases and ActAdd deltas (a plain vector at ActAdd positions is a
    one-position delta: it steers each prompt's first token)."""
    present = [t for t in per_row if t is not None]
    hidden = present[0].shape[-1]
    if operator == "ablate":
        per_row = [None if t is None else interventions.orthonormal_basis(t) for t in per_row]
    if operator == "ablate" or positional or any(t.ndim == 2 for t in present):
        n = max(t.reshape(-1, hidden).shape[0] for t in present)
        out = torch.zeros(len(per_row), n, hidden)
        for i, t in enumerate(per_row):
            if t is not None:
                t = t.reshape(-1, hidden)
                out[i, : t.shape[0]] = t
        return out
    return torch.stack([torch.zeros(hidden) if t is None else t for t in per_row])


@dataclass
class CallState:
    """The mutable state of one call: its plan and what the current forward chunk covers."""

    plan: Plan | None
    capture_layers: frozenset[int] = frozenset()
    stop_after: int | None = None
    prompt_len: int | torch.Tensor | None = None
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)
    rel: torch.Tensor | None = None
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    chunk_mask: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    position_masks: Mapping[str, torch.Tensor] | None = None
    """``{positions: (batch, length) bool}`` for a caller that lays tokens out itself (rows
    packed behind a shared prefix, see ``teacher.packed_logprobs``): used instead of the masks
    derived from absolute positions."""

    def __post_init__(self) -> None:
        if self.plan is not None:
            self.prompt_len = self.plan.prompt_len

    def begin_chunk(self, batch: int, length: int, past: int, pad_mask: torch.Tensor) -> None:
        """Compute the position masks of a forward chunk covering ``past .. past+length``."""
        self.chunk_mask = pad_mask
        plan = self.plan
        if past == 0 and (plan is None or plan.prompt_len is None):
            # raw calls under ``steer()``: each new sequence's first forward is its prompt
            self.prompt_len = length
        if plan is None:
            return
        if batch != plan.batch_size and plan.batch_size != 1:
            raise GenerationError(
                f"the steering plan has {plan.batch_size} rows but the forward has {batch}; "
                "beam search and num_return_sequences > 1 are not supported with per-row steering"
            )
        pos = torch.arange(past, past + length, device=pad_mask.device)
        prompt = self.prompt_len if self.prompt_len is not None else past + length
        if isinstance(prompt, torch.Tensor):  # each row's own prompt end
            in_prompt = pos[None, :] < prompt.to(pad_mask.device, torch.long)[:, None]
        else:
            in_prompt = (pos < prompt)[None, :]
        self.masks = {}
        given = self.position_masks or {}
        for mode in plan.modes:
            if mode in given:
                if tuple(given[mode].shape) != (batch, length):
                    raise GenerationError(
                        f"the {mode!r} position mask has shape {tuple(given[mode].shape)}, "
                        f"but the forward is {(batch, length)}"
                    )
                m = pad_mask & given[mode].to(pad_mask.device)
            elif mode == "all":
                m = pad_mask
            elif mode == "prompt":
                m = pad_mask & in_prompt
            elif mode == "generated":
                m = pad_mask & ~in_prompt
            else:
                if plan.starts is None and past == 0:  # raw calls: each row's leading pads
                    self.starts = (~pad_mask).long().cumprod(dim=1).sum(dim=1)
                starts = plan.starts if plan.starts is not None else self.starts
                starts = starts if starts is not None else torch.zeros(batch)
                rel = pos[None, :] - starts.to(pad_mask.device, torch.long)[:, None]
                n = max(
                    op.tensor.shape[1]
                    for ops in plan.layers.values()
                    for op in ops
                    if op.positions == "actadd"
                )
                m = pad_mask & (rel >= 0) & (rel < n) & in_prompt
                self.rel = rel
            self.masks[mode] = m.unsqueeze(-1).float() if bool(m.any()) else None


_ACTIVE: ContextVar[CallState | None] = ContextVar("actsteer_call_state", default=None)


@contextlib.contextmanager
def activate(state: CallState | None) -> Iterator[CallState | None]:
    """Make ``state`` the current call's state for the duration of the block (per context)."""
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def current_state() -> CallState | None:
    return _ACTIVE.get()


def _stack_pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    state = _ACTIVE.get()
    if state is None:
        return None
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    if x is None:
        raise GenerationError("actsteer could not find input_ids or inputs_embeds in the forward")
    batch, length = x.shape[0], x.shape[1]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] >= length:
        past = mask.shape[1] - length
        pad = mask[:, -length:] != 0
    else:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        get_len = getattr(cache, "get_seq_length", None)
        past = int(get_len()) if callable(get_len) else 0
        pad = torch.ones(batch, length, dtype=torch.bool, device=x.device)
    state.begin_chunk(batch, length, past, pad)
    return None


def _make_layer_hook(index: int) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
        state = _ACTIVE.get()
        if state is None:
            return None
        plan = state.plan
        ops = plan.layers.get(index, ()) if plan is not None else ()
        capture = index in state.capture_layers
        if not ops and not capture:
            return None
        is_tensor = isinstance(output, torch.Tensor)
        h = output if is_tensor else output[0]
        for op in ops:
            h = op.apply(h, state)
        if capture:
            state.captured[index] = h.detach()
            if index == state.stop_after:
                raise StopForward
        if not ops:
            return None
        return h if is_tensor else (h, *output[1:])

    return hook


def install(stack: torch.nn.Module, layers: Sequence[torch.nn.Module]) -> list:
    """Install the stack pre-hook and one hook per layer; returns removable handles."""
    handles = [stack.register_forward_pre_hook(_stack_pre_hook, with_kwargs=True)]
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(_make_layer_hook(i)))
    return handles
