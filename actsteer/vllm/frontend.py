"""The request side of the plugin, in vLLM's front-end process: a steered request is checked
before it is scheduled (a bad expression, an unknown vector or preset, a wrong hidden size fails
that request with HTTP 400 and never runs unsteered), and its prefix-cache salt is derived from
its steering, so it never reuses KV computed under other steering (or none). A steering that
treats prompt and generated tokens apart also salts with the prompt's length: vLLM caches the
blocks of generated tokens too, and a follow-up prompt that contains an earlier reply must not
reuse KV computed for those tokens as *generated* ones."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from ..errors import ActsteerError
from .served import XARG, ServedModel, compile_spec

_PATCHED = False


@functools.cache
def _served() -> ServedModel:
    return ServedModel.from_bundle()


@functools.lru_cache(maxsize=1024)
def _checked(spec: str) -> tuple[str, bool]:
    """The steering's salt and whether it is positional, once the spec compiled (memoised: a
    spec is checked once)."""
    compiled = compile_spec(_served(), spec)
    return "actsteer-" + hashlib.sha256(compiled.key.encode()).hexdigest()[:32], compiled.positional


def salt_for(spec: object, user_salt: str | None, prompt_len: int | None = None) -> str:
    """The cache salt of a steered request (the user's own salt, if any, kept in front; the
    prompt's length after it for a positional steering)."""
    if not isinstance(spec, str):
        raise ActsteerError(f"{XARG} must be a string (an expression or a JSON object)")
    ours, positional = _checked(spec)
    if positional:
        ours += f".p{prompt_len if prompt_len is not None else 'x'}"
    if not user_salt:
        return ours
    if len(user_salt) > 64:  # vLLM takes 128 characters: a long salt goes in as its hash
        user_salt = hashlib.sha256(user_salt.encode()).hexdigest()[:40]
    return f"{user_salt}.{ours}"


def _prompt_len(request: Any) -> int | None:
    """The number of prompt tokens of vLLM's ``EngineCoreRequest`` (ids or embeddings)."""
    ids = getattr(request, "prompt_token_ids", None)
    if ids is not None:
        return len(ids)
    embeds = getattr(request, "prompt_embeds", None)
    return int(embeds.shape[0]) if embeds is not None else None


def patch(*, steering: bool = True) -> None:
    """Check steered requests and salt their cache keys in ``InputProcessor`` (idempotent);
    ``steering=False`` (no serve bundle): refuse every steered request instead."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    process_inputs = InputProcessor.process_inputs

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = process_inputs(self, *args, **kwargs)
        params = request.sampling_params
        spec = (params.extra_args or {}).get(XARG) if params is not None else None
        if spec is not None and not steering:
            raise VLLMValidationError(
                "actsteer: this server steers nothing (it was not started with `actsteer "
                "serve`); send the request without vllm_xargs.actsteer",
                parameter=f"vllm_xargs.{XARG}",
                value=spec,
            )
        if spec is not None:
            try:
                request.cache_salt = salt_for(spec, request.cache_salt, _prompt_len(request))
            except (ActsteerError, ValueError) as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise VLLMValidationError(
                    f"actsteer: {message}", parameter=f"vllm_xargs.{XARG}", value=spec
                ) from exc
        return request

    InputProcessor.process_inputs = patched
    _PATCHED = True
