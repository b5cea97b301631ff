"""actsteer inside a vLLM server (the ``actsteer[vllm]`` extra): per-request steering from
``SamplingParams.extra_args["actsteer"]`` (``vllm_xargs`` over HTTP), as an expression
(``"json"``, ``"love:2 - formal"``, ``"french@8-14:3"``) or a JSON object with ``expression``,
``coeff`` and ``positions``.

``register`` is the ``vllm.general_plugins`` entry point; vLLM calls it in every process. The
runner seams it patches are private, so it refuses any vLLM but the tested versions. Under a
plain ``vllm serve`` (no serve bundle: not started by ``actsteer serve``) it steers nothing and
says so once: unsteered requests are served as usual and steered ones are refused with HTTP 400,
never served unsteered.
"""

from __future__ import annotations

import os
import sys

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
    from .served import BUNDLE_ENV

    if not os.environ.get(BUNDLE_ENV):  # a plain `vllm serve` where actsteer is installed
        frontend.patch(steering=False)
        if not os.environ.get(_NOTICE_SHOWN):  # once: vLLM's workers inherit the environment
            os.environ[_NOTICE_SHOWN] = "1"
            print(
                f"actsteer: no serve bundle (${BUNDLE_ENV}): serving unsteered requests; steered "
                "ones get HTTP 400 (start the server with `actsteer serve` to steer)",
                file=sys.stderr,
                flush=True,
            )
        return
    frontend.patch()
    runner.patch()


_NOTICE_SHOWN = "ACTSTEER_PASSTHROUGH_NOTICE"
