"""The prompted model as a teacher: its greedy replies and next-token distributions, and how
close a steered student (the same model without the prompt) comes to them.

Shared by ``distill`` (which trains vectors against these targets) and ``evaluate.fidelity``
(which reports the same measure for any steering), so the training card's fidelity and the
benchmark's are one number.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig

from ...apply import hooks

if TYPE_CHECKING:
    from ...runtime.surface import Steerable


def chats(system_prompt: str, inputs: Sequence[str], template: bool) -> tuple[list, list]:
    """The chats with the prompt (teacher) and without it (student, exactly what a call without
    the prompt sends) for each input."""
    with_prompt, without = [], []
    for text in inputs:
        without.append([{"role": "user", "content": text}])
        if template:
            with_prompt.append(
                [{"role": "user", "content": system_prompt.replace("{input}", text)}]
            )
        else:
            with_prompt.append(
                [{"role": "system", "content": system_prompt}, {"role": "user", "content": text}]
            )
    return with_prompt, without


@dataclass(frozen=True)
class Example:
    """One input's teacher-forcing data: both prompts, the teacher's reply (ending EOS included)
    and the teacher's top-k log-probs at each reply position (plus the log-mass outside them)."""

    teacher: list[int]
    student: list[int]
    reply: list[int]
    top_ids: torch.Tensor = field(repr=False)
    top_logp: torch.Tensor = field(repr=False)
    tail_logp: torch.Tensor = field(repr=False)


def teacher_examples(
    sm: Steerable,
    system_prompt: str,
    inputs: Sequence[str],
    *,
    template: bool = False,
    max_new_tokens: int = 24,
    top_k: int = 64,
    batch_size: int = 64,
    share_prefix: bool = True,
) -> list[Example]:
    """The teacher's greedy replies, generated once, with its top-k log-probs at each reply
    position read from the same generate (no second forward). The start all prompts of a batch
    share (the system turn) runs once and each row continues from its KV cache
    (``share_prefix=False``: every row runs whole). Call on the generation thread."""
    with_prompt, without = chats(system_prompt, inputs, template)
    teacher_ids = [sm.encode(c) for c in with_prompt]
    student_ids = [sm.encode(c) for c in without]
    eos = set(sm.eos_token_ids)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=sm.pad_token_id,
        eos_token_id=sorted(eos) or None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    cache_arg = next((a for a in ("cache", "past_key_values") if _accepts(sm.model, a)), None)
    share_prefix = share_prefix and cache_arg is not None and _attention_only(sm.model)
    out: list[Example] = []
    for start in range(0, len(inputs), batch_size):
        chunk = teacher_ids[start : start + batch_size]
        shared = shared_prefix(chunk) if len(chunk) > 1 and share_prefix else 0
        with torch.inference_mode():
            # the prompts' shared start runs once; each row continues from its cache
            cache = None
            if shared:
                prefix = torch.tensor([chunk[0][:shared]], device=sm.device)
                cache = _prefix_cache(sm, prefix, cache_arg, len(chunk))
            shared = shared if cache is not None else 0
            ids, mask = sm.handle.pad([c[shared:] for c in chunk])
            kwargs: dict = {}
            if shared:
                kwargs[cache_arg] = cache
                ids = torch.cat([prefix.expand(len(chunk), -1), ids], dim=1)
                mask = torch.cat([torch.ones_like(ids[:, :shared]), mask], dim=1)
            result = sm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                **kwargs,
            )
        new = result.sequences[:, ids.shape[1] :].tolist()
        logp = torch.log_softmax(torch.stack(result.logits, dim=1).float(), dim=-1).cpu()
        for row, tokens in enumerate(new):
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
            top_logp, top_ids = logp[row, :end].topk(min(top_k, logp.shape[-1]), dim=-1)
            out.append(
                Example(
                    chunk[row],
                    student_ids[start + row],
                    tokens[:end],
                    top_ids.clone(),
                    top_logp.clone(),
                    log1mexp(top_logp.logsumexp(-1)),
                )
            )
    return out


def _prefix_cache(sm: Steerable, prefix: torch.Tensor, cache_arg: str, rows: int):
    """The KV cache of ``prefix`` (one row), repeated for ``rows`` rows; None for a cache that
    cannot be repeated."""
    kwargs: dict = {"use_cache": True}
    if _accepts(sm.model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = sm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), **kwargs)
    cache = out.get(cache_arg)  # the output field is named as the argument
    if not callable(getattr(cache, "batch_repeat_interleave", None)):
        return None
    cache.batch_repeat_interleave(rows)
    return cache


_ATTENTION = {"full_attention", "sliding_attention", "chunked_attention"}
_RECURRENT = ("mamba", "rwkv", "ssm", "recurrent", "xlstm", "jamba", "zamba", "bamba", "lfm2")


def _attention_only(model: torch.nn.Module) -> bool:
    """Whether every layer is attention, where a shared cached prefix, a gap in the mask and
    packed rows mean what they say; a recurrent or state-space layer reads them differently."""
    cfg = model.config
    if set(getattr(cfg, "layer_types", None) or ()) - _ATTENTION:
        return False
    name = f"{getattr(cfg, 'model_type', '')} {type(model).__name__}".lower()
    return not any(kind in name for kind in _RECURRENT)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for log-probabilities ``x <= 0``, kept finite."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def reply_logprobs(
    sm: Steerable,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    row: hooks.RowSpec | None = None,
    *,
    pack: bool = True,
) -> torch.Tensor:
    """Teacher-forced log-probs ``(rows, longest reply, vocab)`` that the model, steered by the
    compiled ``row`` (applied to every row), gives each reply token after its prompt.

    The rows run packed into one sequence (``packed_logprobs``) where the model allows it, else
    padded: prompts left-padded and replies right-padded, so every prompt ends at the same
    column (the plan's prompt length: reply tokens count as generated), position ids following
    the mask as in generate. ``pack=False`` forces the padded form. Differentiable in the row's
    tensors when grad is enabled.
    """
    if pack:
        packed = packed_logprobs(sm, prompts, replies, row)
        if packed is not None:
            return packed
    width = max(len(p) for p in prompts)
    longest = max(len(r) for r in replies)
    ids = torch.full((len(prompts), width + longest), sm.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, replies)):
        ids[i, width - len(p) : width + len(r)] = torch.tensor([*p, *r], dtype=torch.long)
        mask[i, width - len(p) : width + len(r)] = 1
    ids, mask = ids.to(sm.device), mask.to(sm.device)
    kwargs: dict = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if _accepts(sm.model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if _accepts(sm.model, "logits_to_keep"):
        kwargs["logits_to_keep"] = longest + 1
    plan = None
    if row:
        starts = (mask[:, :width] == 0).sum(dim=1).cpu()
        plan = sm.handle.plan([(row, "distill")], width, starts)
    with hooks.activate(hooks.CallState(plan) if plan is not None else None):
        logits = sm.model(**kwargs).logits
    span = logits[:, -(longest + 1) : -1]
    return torch.log_softmax(span.float(), dim=-1)


#: The longest packed sequence ``packed_logprobs`` builds (its attention mask is tokens^2).
MAX_PACKED_TOKENS = 2048


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share, leaving every prompt at least one of its
    own (the token whose logits predict its reply's first)."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def prefix_groups(prompts: Sequence[Sequence[int]], shared: int) -> list[tuple[int, list[int]]]:
    """The rows grouped by the token after the ``shared`` start all of them share, each group
    with the longer start its own rows share (``(start length, row indices)``, in order of
    first appearance). Stack-safe distillation mixes rows with the system prompt and rows
    without it: all share only the chat template's first tokens, each kind a whole system turn."""
    buckets: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        buckets.setdefault(p[shared] if len(p) > shared else -1, []).append(i)
    return [
        (shared_prefix([prompts[i] for i in rows]) if len(rows) > 1 else shared, rows)
        for rows in buckets.values()
    ]


def packed_logprobs(
    sm: Steerable,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    row: hooks.RowSpec | None = None,
) -> torch.Tensor | None:
    """``reply_logprobs`` with the rows packed into one sequence and no padding: the prefix all
    prompts share (a chat template's system turn: 24 of SmolLM2's ~38 student-prompt tokens)
    once, then each row's rest of prompt and reply, attending to the prefix and to itself only
    (a custom 4-D mask; position ids restart after the prefix for each row). Rows that share a
    longer start among themselves (``prefix_groups``: stack-safe training's rows with the system
    prompt, and those without it) have it once too, after the common prefix. One forward of
    about a third fewer tokens, with the same numbers to float rounding.

    None where packing does not apply: attention other than sdpa/eager (a custom mask is
    needed), a layer that is not attention, no ``position_ids``/``logits_to_keep``, ActAdd
    positions (relative to a row's start), a sliding window shorter than a row, or over
    ``MAX_PACKED_TOKENS`` tokens.
    """
    model = sm.model
    cfg = model.config
    if (
        getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager")
        or not _attention_only(model)
        or not (_accepts(model, "position_ids") and _accepts(model, "logits_to_keep"))
        or any(positions == "actadd" for positions, _ in (row or {}))
    ):
        return None
    window = getattr(cfg, "sliding_window", None)
    lengths = [len(p) + len(r) for p, r in zip(prompts, replies)]
    if window and max(lengths) > window:
        return None
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    groups = prefix_groups(prompts, shared)
    total = shared + sum(k - shared for k, _ in groups)
    total += sum(lengths[i] - k for k, rows in groups for i in rows)
    if total > MAX_PACKED_TOKENS:
        return None
    tokens, pos, prompt_mask = list(prompts[0][:shared]), list(range(shared)), [True] * shared
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:shared, :shared] = True
    longest = max(len(r) for r in replies)
    keep = torch.zeros(len(prompts), longest, dtype=torch.long)
    for k, rows in groups:
        # the group's own shared start (after the one all rows share), once
        head = len(tokens)
        tokens += prompts[rows[0]][shared:k]
        pos += range(shared, k)
        prompt_mask += [True] * (k - shared)
        body = len(tokens)
        allowed[head:body, :shared] = True
        allowed[head:body, head:body] = True
        for i in rows:
            p, r = prompts[i], replies[i]
            start, rest = len(tokens), len(p) - k
            tokens += [*p[k:], *r]
            pos += range(k, k + rest + len(r))
            prompt_mask += [True] * rest + [False] * len(r)
            end = len(tokens)
            allowed[start:end, :shared] = True
            allowed[start:end, head:body] = True  # the group's own start
            allowed[start:end, start:end] = True
            # logits at the last prompt token and every reply token but the last; padded with
            # the row's last such index (finite values; callers mask or slice them off)
            idx = torch.arange(start + rest - 1, start + rest - 1 + max(len(r), 1))
            keep[i] = idx[-1]
            keep[i, : len(idx)] = idx
    allowed &= torch.ones_like(allowed).tril()
    dtype = model.dtype
    device = sm.device
    mask = torch.zeros(1, 1, total, total, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    prompt = torch.tensor([prompt_mask], device=device)
    plan = sm.handle.plan([(row, "distill")]) if row else None
    state = None
    if plan is not None:
        masks = {"all": torch.ones_like(prompt), "prompt": prompt, "generated": ~prompt}
        state = hooks.CallState(plan, position_masks=masks)
    with hooks.activate(state):
        logits = model(
            input_ids=torch.tensor([tokens], device=device),
            attention_mask=mask.to(device),
            position_ids=torch.tensor([pos], device=device),
            logits_to_keep=keep.view(-1).to(device),
            use_cache=False,
        ).logits
    if logits.shape[:2] != (1, keep.numel()):
        return None
    return torch.log_softmax(logits.view(len(prompts), longest, -1).float(), dim=-1)
