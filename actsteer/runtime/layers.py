"""Finding the decoder layers (and the stack that runs them) of a Hugging Face causal LM."""

from __future__ import annotations

import torch

from ..errors import UnknownArchitectureError

#: Attribute paths of the decoder-layer list in common families, tried in order.
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/2/3, Phi-3, SmolLM, OLMo
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM, StarCoder
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "backbone.layers",  # Mamba-style
)


def _get(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def num_hidden_layers(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def find_layers(
    model: torch.nn.Module, layers_path: str | None = None
) -> tuple[torch.nn.Module, torch.nn.ModuleList, str]:
    """Return ``(stack, layers, path)``: the module owning the layer list, the list, its path.

    ``layers_path`` (e.g. ``"model.layers"``) overrides the search for unusual architectures.
    """
    paths = (layers_path,) if layers_path else KNOWN_LAYER_PATHS
    for path in paths:
        layers = _get(model, path)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            stack_path = path.rsplit(".", 1)[0] if "." in path else ""
            stack = _get(model, stack_path) if stack_path else model
            return stack, layers, path  # type: ignore[return-value]
    if layers_path:
        raise UnknownArchitectureError(
            f"{type(model).__name__} has no non-empty nn.ModuleList at {layers_path!r}"
        )
    expected = num_hidden_layers(model)
    if expected:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == expected and name:
                stack_path = name.rsplit(".", 1)[0] if "." in name else ""
                stack = model.get_submodule(stack_path) if stack_path else model
                return stack, module, name
    raise UnknownArchitectureError(
        f"cannot find the decoder layers of {type(model).__name__}; pass "
        "layers_path='attribute.path.to.layers' (the nn.ModuleList of decoder blocks, e.g. "
        "'model.layers') to SteeredModel.from_pretrained or from_model"
    )


def placement(layer: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a layer's hidden states: accelerate's execution device if the
    layer is dispatched, else its first floating-point parameter not on ``meta`` (a 4-bit
    layer's first parameter is packed ``uint8``; an offloaded one's sits on ``meta``)."""
    hook = getattr(layer, "_hf_hook", None)
    run_on = getattr(hook, "execution_device", None)
    param = next(
        (p for p in layer.parameters() if p.is_floating_point() and p.device.type != "meta"),
        None,
    )
    device = torch.device(run_on) if run_on is not None else None
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    return device, param.dtype if param is not None else torch.float32
