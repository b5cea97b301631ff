"""actsteer inside a vLLM server (the ``actsteer[vllm]`` extra): per-request steering from
``SamplingParams.extra_args["actsteer"]`` (``vllm_xargs`` over HTTP), as an expression
(``"json"``, ``"love:2 - formal"``, ``"french@8-14:3"``) or a JSON object with ``expression``,
``coeff`` and ``positions``.

``register`` is the ``vllm.general_plugins`` entry point; vLLM calls it in every process. The
runner seams it patches are private, so it refuses any vLLM but the tested versions.
"""

from __future__ import annotations

#: vLLM versions whose model runner seams are tested (``tests/vllm``).
SUPPORTED_VLLM = ("0.32.0",)


def register() -> None:
    """Arm vLLM's model runner with actsteer's steering (idempotent)."""
    import vllm

    if vllm.__version__.split("+")[0] not in SUPPORTED_VLLM:
        raise RuntimeError(
            f"actsteer's vLLM plugin is tested with vLLM {', '.join(SUPPORTED_VLLM)}, not "
            f"{vllm.__version__}: its runner seams are private; pip install 'actsteer[vllm]'"
        )
    from . import frontend, runner

    frontend.patch()
    runner.patch()
