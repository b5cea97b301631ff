"""The request side of the plugin, in vLLM's front-end process: a steered request is checked
before it is scheduled (a bad expression, an unknown vector or preset, a wrong hidden size fails
that request with HTTP 400 and never runs unsteered), and its prefix-cache salt is derived from
its steering, so it never reuses KV computed under other steering (or none)."""

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
def _checked(spec: str) -> str:
    """The steering's salt, once the spec compiled (memoised: a spec is checked once)."""
    compiled = compile_spec(_served(), spec)
    return "actsteer-" + hashlib.sha256(compiled.key.encode()).hexdigest()[:32]


def salt_for(spec: object, user_salt: str | None) -> str:
    """The cache salt of a steered request (the user's own salt, if any, kept in front)."""
    if not isinstance(spec, str):
        raise ActsteerError(f"{XARG} must be a string (an expression or a JSON object)")
    ours = _checked(spec)
    return f"{user_salt[:80]}.{ours}" if user_salt else ours


def patch() -> None:
    """Check steered requests and salt their cache keys in ``InputProcessor`` (idempotent)."""
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
        if spec is not None:
            try:
                request.cache_salt = salt_for(spec, request.cache_salt)
            except (ActsteerError, ValueError) as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise VLLMValidationError(
                    f"actsteer: {message}", parameter=f"vllm_xargs.{XARG}", value=spec
                ) from exc
        return request

    InputProcessor.process_inputs = patched
    _PATCHED = True
