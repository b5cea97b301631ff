"""Steering inside vLLM's model runner: per-layer delta tables, a per-step token map, and the
two patches that arm them (private seams of vLLM 0.32: hence the pinned version).

* After ``load_model`` a forward hook goes on every decoder layer. vLLM's layers return
  ``(hidden, residual)`` whose sum is the residual stream that Hugging Face's layer returns, so
  the hook adds each token's delta to ``hidden``.
* After ``_prepare_inputs`` the batch of this step is final: request ``i`` of
  ``input_batch.req_ids`` owns the next ``num_scheduled_tokens[i]`` flattened token rows, at
  absolute positions ``num_computed_tokens[i] + j``; a position below the prompt length is a
  prompt token, the others are generated. That holds under chunked prefill and with the prefix
  cache (whose reused tokens are not recomputed; the cache salt keeps a steered request from
  reusing an unsteered prefix, see ``frontend``).
* Steering other than plain addition (ablation, norm-preserving addition, ActAdd positions)
  runs the local hooks' own operators (``hooks.LayerOp``) on each such request's rows of the
  residual stream ``hidden + residual``, and hands the result on as ``(0, stream)``: the next
  layer's fused add then reads exactly that stream. In compiled mode this step is the custom op
  ``actsteer::apply_ops``, opaque to the tracer, so it reads each step's requests in Python.
* Distinct steerings live in a bounded table (``MAX_SLOTS`` rows per layer, slot 0 is zero);
  the least recently used entry not needed by the current step is evicted.
* Compiled mode (torch.compile, vLLM's default): the tables and the token map are buffers of
  the decoder layers, preallocated and only ever written in place, and the hook always adds
  (an unsteered token reads the zero row), so the traced graph has no Python branch and reads
  the current step's map. The compile cache is salted with this module's source, so a graph
  compiled without the plugin (or by another version of it) is never reused.
"""

from __future__ import annotations

import collections
import hashlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..apply import hooks
from .served import XARG, ServedModel, ServedSteering, compile_spec

#: Distinct steerings held at once (two table rows each: prompt and generated deltas).
MAX_SLOTS = 64


class Steerer:
    """The delta tables of one loaded model and the token map of the current step."""

    def __init__(
        self, model: torch.nn.Module, served: ServedModel, max_tokens: int, *, always: bool
    ) -> None:
        self.served = served
        layers = _decoder_layers(model)
        if len(layers) != served.num_layers:
            raise RuntimeError(
                f"served model has {len(layers)} decoder layers, the serve bundle says "
                f"{served.num_layers}: the bundle was made for another model"
            )
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.always = always
        self.live = False  # eager mode: some token of this step is steered
        self.filled = 0  # rows[:filled] may be non-zero
        self.rows = torch.zeros(max_tokens, dtype=torch.long, device=self.device)
        self.tables: list[torch.Tensor] = []
        for index, layer in enumerate(layers):
            table = torch.zeros(
                2 * MAX_SLOTS + 1, served.hidden_size, device=p.device, dtype=p.dtype
            )
            layer.register_buffer("actsteer_table", table, persistent=False)
            layer.register_buffer("actsteer_rows", self.rows, persistent=False)
            self.tables.append(table)
            layer.register_forward_hook(self._hook(index))
        self.active_layers: set[int] = set()
        self.entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        # this step's requests steered by operators other than addition: their token rows,
        # plan and position masks; and the layers where they act
        self.ops: list[tuple[int, int, hooks.Plan, hooks.CallState]] = []
        self.ops_layers: set[int] = set()
        global _STEERER
        _STEERER = self

    def _hook(self, layer: int):
        always = self.always

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if not always and not (self.live and layer in self.active_layers):
                return None
            pair = isinstance(output, tuple) and len(output) > 1
            hidden = output[0] if isinstance(output, tuple) else output
            rows = module.actsteer_rows[: hidden.shape[0]]
            hidden = hidden + module.actsteer_table.index_select(0, rows)
            residual = output[1] if pair else torch.zeros_like(hidden)
            if always:  # traced: the operators run in an op the tracer does not look into
                torch.ops.actsteer.apply_ops(hidden, residual, layer)
            elif layer in self.ops_layers:
                residual = residual.clone()  # vLLM may still hold it; ``hidden`` is ours
                self.apply_ops(hidden, residual, layer)
            if not pair:
                hidden = hidden + residual  # a layer that returns the stream itself
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            return (hidden, residual, *output[2:])

        return hook

    def apply_ops(self, hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> None:
        """Run this step's non-additive steering at ``layer``, in place: each such request's
        rows of the stream ``hidden + residual`` go through the local hooks' operators (in
        their order), and the result is left in ``residual`` with ``hidden`` zeroed."""
        for start, end, plan, state in self.ops:
            layer_ops = plan.layers.get(layer)
            if not layer_ops:
                continue
            stream = (hidden[start:end] + residual[start:end]).unsqueeze(0)
            for op in layer_ops:
                stream = op.apply(stream, state)
            residual[start:end] = stream[0]
            hidden[start:end] = 0

    def slot(self, spec: str, keep: set[int]) -> int:
        """The table slot of ``spec`` (compiled and written on first use)."""
        if spec in self.entries:
            self.entries.move_to_end(spec)
            return self.entries[spec].slot
        compiled = compile_spec(self.served, spec)
        plan = compiled.plan
        if plan is not None:
            plan = plan.to(
                dict.fromkeys(plan.layers, self.device), dict.fromkeys(plan.layers, self.dtype)
            )
        used = {e.slot for e in self.entries.values()}
        free = next((s for s in range(1, MAX_SLOTS + 1) if s not in used), None)
        if free is None:
            victim = next((k for k, e in self.entries.items() if e.slot not in keep), None)
            if victim is None:
                raise RuntimeError(f"more than {MAX_SLOTS} distinct steerings in one step")
            free = self.entries.pop(victim).slot
        for table in self.tables:
            table[2 * free - 1].zero_()
            table[2 * free].zero_()
        for layer, d in compiled.prompt.items():
            self.tables[layer][2 * free - 1] = d.to(self.device, self.dtype)
        for layer, d in compiled.generated.items():
            self.tables[layer][2 * free] = d.to(self.device, self.dtype)
        self.entries[spec] = Entry(free, compiled, plan)
        self._refresh_layers()
        return free

    def _refresh_layers(self) -> None:
        self.active_layers = {layer for e in self.entries.values() for layer in e.compiled.layers}

    def prepare_step(self, runner: Any, num_scheduled_tokens: Any) -> None:
        """Fill the token map for the step ``runner`` has just prepared."""
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        specs = []
        for i, req_id in enumerate(batch.req_ids[:num_reqs]):
            state = runner.requests[req_id]
            params = state.sampling_params
            extra = (params.extra_args or {}) if params is not None else {}
            specs.append((i, state, extra.get(XARG)))
        self.ops, self.ops_layers = [], set()
        if all(spec is None for _, _, spec in specs):
            self.live = False
            self._write(None)
            return
        keep: set[int] = set()
        pieces = []
        row = 0
        for i, state, spec in specs:
            n = int(num_scheduled_tokens[i])
            row, first = row + n, row
            if spec is None:
                pieces.append(torch.zeros(n, dtype=torch.long))
                continue
            slot = self.slot(spec, keep)
            keep.add(slot)
            start = int(batch.num_computed_tokens_cpu[i])
            plan = self.entries[spec].plan
            if plan is not None:  # its table rows are zero: the operators do it all
                prompt_len = int(state.num_prompt_tokens)
                masks = hooks.CallState(replace(plan, prompt_len=prompt_len))
                masks.begin_chunk(1, n, start, torch.ones(1, n, dtype=torch.bool))
                self.ops.append((first, row, plan, masks))
                self.ops_layers.update(plan.layers)
            positions = torch.arange(start, start + n)
            prompt = positions < int(state.num_prompt_tokens)
            pieces.append(torch.where(prompt, 2 * slot - 1, 2 * slot))
        self._write(torch.cat(pieces))
        self.live = True

    def _write(self, rows: torch.Tensor | None) -> None:
        """Put this step's token map in the (preallocated) buffer, zeroing what is left of the
        previous step's."""
        total = 0 if rows is None else rows.shape[0]
        if total > self.rows.shape[0]:
            raise RuntimeError(f"a step of {total} tokens exceeds {self.rows.shape[0]}")
        if self.filled > total:
            self.rows[total : self.filled].zero_()
        if rows is not None:
            self.rows[:total].copy_(rows)
        self.filled = total


@dataclass(frozen=True)
class Entry:
    """A steering in the table: its slot, its compiled deltas and, for operators other than
    addition, the local hooks' plan of them."""

    slot: int
    compiled: ServedSteering
    plan: hooks.Plan | None


#: The ``Steerer`` of this process's model runner, for the ``actsteer::apply_ops`` op.
_STEERER: Steerer | None = None


@torch.library.custom_op("actsteer::apply_ops", mutates_args=("hidden", "residual"))
def _apply_ops(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> None:
    """The operators of the current step at ``layer`` (a no-op when it has none)."""
    steerer = _STEERER
    if steerer is not None and layer in steerer.ops_layers:
        steerer.apply_ops(hidden, residual, layer)


@_apply_ops.register_fake
def _(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> None:
    return None


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise RuntimeError(
            f"actsteer's vLLM plugin cannot find the decoder layers of {type(model).__name__}"
        )
    return list(layers)


def salt_compile_cache(vllm_config: Any) -> None:
    """Put this module's source hash into the config vLLM hashes for its compile caches
    (``additional_config`` counts there), so a graph traced without these hooks, or by another
    version of them, is never loaded into a steered server."""
    salt = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    extra = vllm_config.additional_config
    if extra is None or isinstance(extra, dict):
        vllm_config.additional_config = {**(extra or {}), "actsteer": salt}
    else:
        raise RuntimeError(
            "actsteer cannot salt vLLM's compile cache (additional_config is not a dict): "
            "start the server with --enforce-eager"
        )


_PATCHED = False


def patch() -> None:
    """Arm vLLM's CPU model runner (idempotent: vLLM loads plugins in every process)."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.config import CompilationMode
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "actsteer's vLLM plugin is tested on vLLM's CPU runner only; on this runner a "
            "steered request would come out unsteered, so the server does not start"
        )

    GPUModelRunner.load_model = refuse  # CPUModelRunner overrides load_model: not affected
    load_model = CPUModelRunner.load_model
    prepare_inputs = CPUModelRunner._prepare_inputs

    def patched_load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        compiled = self.vllm_config.compilation_config.mode != CompilationMode.NONE
        if compiled:
            salt_compile_cache(self.vllm_config)
        out = load_model(self, *args, **kwargs)
        if self.max_num_reqs > MAX_SLOTS:
            raise RuntimeError(
                f"actsteer holds {MAX_SLOTS} distinct steerings per step; serve with "
                f"--max-num-seqs {MAX_SLOTS} or fewer (got {self.max_num_reqs})"
            )
        self._actsteer = Steerer(
            self.model, ServedModel.from_bundle(), self.max_num_tokens, always=compiled
        )
        mode = "compiled" if compiled else "eager"
        # vLLM's logging shows only its own loggers; its workers' stderr reaches the server log
        layers = len(self._actsteer.tables)
        print(f"actsteer: steering armed on {layers} layers ({mode})", file=sys.stderr, flush=True)
        return out

    def patched_prepare_inputs(
        self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kw: Any
    ) -> Any:
        out = prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kw)
        steerer = getattr(self, "_actsteer", None)
        if steerer is not None:
            steerer.prepare_step(self, num_scheduled_tokens)
        return out

    CPUModelRunner.load_model = patched_load_model
    CPUModelRunner._prepare_inputs = patched_prepare_inputs
    _PATCHED = True
