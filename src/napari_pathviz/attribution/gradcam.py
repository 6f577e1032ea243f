"""Grad-CAM and Grad-CAM++ (arXiv 1610.02391, 1710.11063) on a chosen layer.

On a transformer layer the tokens (B, N, D) are put back on their patch grid (B, D, h, w),
the leading class and register tokens (``N - h * w`` of them) dropped, as pytorch-grad-cam's
``reshape_transform`` does; the maps are then those of a feature map.

Maps keep their sign and scale (no ReLU, no per-map [0, 1] normalisation as pytorch-grad-cam
does), so they are comparable across patches; normalising is a display choice.

The layer's output is captured before anything downstream can change it in place: the forward
hook keeps the output and hands the rest of the network a copy. A following in-place ReLU or
``out += identity`` (every ResNet's ``bn1``/``bn2``) then changes the copy, and the activation
and gradient used are those of the layer itself (pytorch-grad-cam takes the modified ones). A
torch.fx copy with out-of-place operations would not do: fx inlines blocks such as ``layer4``,
so hooks on them never fire.
"""

from __future__ import annotations

import numpy as np

from ..errors import Cancelled, PathvizError
from ._attention import tokens_to_grid
from ._target import explained_output, forward_checked, resolve_targets
from .result import AttributionResult

DEFAULT_BATCH_SIZE = 64  # patches per forward/backward pass


def find_cam_layer(model, example) -> str:
    """The layer Grad-CAM explains by default. In a vision transformer (a model with attention
    modules, see ``_attention``): the LayerNorm that feeds the last attention (the last block's
    ``norm1``), whose tokens (B, N, D) still each carry their patch; the blocks' outputs do
    not, as only the class token of the last one reaches the head. Otherwise: the last module
    (in forward order) whose output is a spatial feature map (N, C, h, w) with h * w > 1, the
    last convolutional block. Modules run more than once per pass (a reused ReLU) are
    skipped: their output is not one feature map."""
    import torch
    from torch import nn

    from ._attention import attention_modules, is_attention_matrix

    finished: list[tuple[str, str]] = []  # (name, kind) in the order the modules finish
    attention = {id(m) for _n, m in attention_modules(model)}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(m, _inp, out, name=name):
            if id(m) in attention:  # nothing inside an attention module runs as a module
                if isinstance(m, nn.MultiheadAttention) or is_attention_matrix(out):
                    finished.append(("", "attention"))  # a classifier's softmax does not count
            elif (
                isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1
            ):
                finished.append((name, "map"))
            elif isinstance(out, torch.Tensor) and out.ndim == 3:
                finished.append((name, "norm" if isinstance(m, nn.LayerNorm) else "tokens"))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return _chosen_layer(finished)


def _chosen_layer(finished: list[tuple[str, str]]) -> str:
    names = [name for name, _kind in finished]
    once = [(n, kind) for n, kind in finished if n and names.count(n) == 1]
    last_attention = max(
        (i for i, (_n, kind) in enumerate(finished) if kind == "attention"), default=None
    )
    if last_attention is not None:
        before = [(n, k) for n, k in finished[:last_attention] if (n, k) in once]
        for wanted in ("norm", "tokens"):
            chosen = [n for n, k in before if k == wanted]
            if chosen:
                return chosen[-1]
    maps = [n for n, kind in once if kind == "map"]
    if not maps:
        raise PathvizError(
            "Grad-CAM: the model has no layer with a spatial output; name one with --layer"
        )
    return maps[-1]


def grad_cam(
    model,
    inputs,
    *,
    layer: str | None = None,
    target="predicted",
    output: str = "none",
    plus_plus: bool = False,
    eps: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress=None,
    cancelled=None,
) -> AttributionResult:
    """Grad-CAM (or Grad-CAM++) maps of ``inputs`` (N, C, H, W), upsampled to H x W.
    ``eps`` is added to Grad-CAM++'s alpha denominator (0: the paper's eq. 19; 1e-6:
    pytorch-grad-cam's maps)."""
    import torch
    import torch.nn.functional as F

    eps = checked_eps(eps, plus_plus)

    if isinstance(model, torch.jit.ScriptModule):  # hooks are not run on scripted modules
        raise PathvizError(
            "Grad-CAM: a TorchScript model has no hookable layers; load its weights with "
            "--factory (a state dict or safetensors) instead"
        )
    model.eval()
    layer = layer or find_cam_layer(model, inputs[:1])
    saved: dict = {}
    handle = _cam_module(model, layer).register_forward_hook(_keeper(saved))
    maps, all_logits, all_targets = [], [], []
    try:
        for start in range(0, len(inputs), batch_size):
            if cancelled is not None and cancelled():
                raise Cancelled("attribution cancelled")
            x = inputs[start : start + batch_size]
            saved["calls"] = 0
            logits = forward_checked(model, x)
            activation = _checked_activation(saved, layer)
            per_batch = (
                target
                if isinstance(target, (str, int, np.integer))
                else np.asarray(target)[start : start + batch_size]
            )
            targets = resolve_targets(per_batch, logits.detach())
            out = explained_output(logits, output)
            chosen = out.gather(1, torch.as_tensor(targets, device=x.device).view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(chosen, activation)
            if activation.ndim == 3:  # tokens (B, N, D): the patch tokens on their grid
                height, width = x.shape[2:]
                activation = tokens_to_grid(activation, height, width)
                grads = tokens_to_grid(grads, height, width)
            cam = cam_from(activation.detach(), grads.detach(), plus_plus, eps)
            cam = F.interpolate(
                cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False
            )[:, 0]
            maps.append(cam.cpu().numpy())
            all_logits.append(logits.detach())
            all_targets.append(targets)
            if progress is not None:
                progress(min(start + batch_size, len(inputs)), len(inputs))
    finally:
        handle.remove()
    logits = torch.cat(all_logits).float()
    probs = torch.softmax(logits, 1) if logits.shape[1] > 1 else torch.sigmoid(logits)
    return AttributionResult(
        method="gradcampp" if plus_plus else "gradcam",
        maps=np.concatenate(maps),
        targets=np.concatenate(all_targets),
        logits=logits.cpu().numpy(),
        probabilities=probs.cpu().numpy(),
        metadata={"layer": layer, "output": output, **({"eps": eps} if plus_plus else {})},
    )


def checked_eps(eps, plus_plus: bool, name: str = "--gradcampp-eps") -> float:
    """Grad-CAM++'s denominator term (a number or its text), refused when negative or not a
    number, or given to Grad-CAM (where it would be silently ignored); ``name``: the option
    or field the user set."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise PathvizError(f"{name} must be a number, got {eps!r}") from None
    if not np.isfinite(value) or value < 0:
        raise PathvizError(f"{name} must be 0 or more (1e-6 as pytorch-grad-cam), got {eps!r}")
    if value and not plus_plus:
        raise PathvizError(f"{name}: only for Grad-CAM++ (method gradcampp)")
    return value


def _cam_module(model, layer: str):
    """The module named ``layer``, refused when it is not one or is a softmax."""
    import torch

    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n][-12:]
        raise PathvizError(
            f"--layer {layer!r} is not a module of the model "
            f"(the last ones are: {', '.join(names)})"
        )
    if isinstance(modules[layer], torch.nn.Softmax):  # (B, heads, N, N) would pass as a map
        raise PathvizError(
            f"--layer {layer!r} is a softmax (attention weights or probabilities), not a "
            "feature map; name a convolutional block or a transformer block's norm1"
        )
    return modules[layer]


def _keeper(saved: dict):
    """Forward hook keeping the layer's output; the network continues with a copy, so that
    in-place operations after the layer cannot change the kept activation or its gradient."""
    import torch

    def keep(_module, _inputs, out):
        saved["calls"] += 1
        saved["activation"] = out
        if isinstance(out, torch.Tensor):
            saved["version"] = out._version
            return out.clone()
        return None

    return keep


def _checked_activation(saved: dict, layer: str):
    import torch

    activation = saved.get("activation")
    if saved["calls"] > 1:
        raise PathvizError(
            f"--layer {layer!r} runs {saved['calls']} times in one forward pass (a reused "
            "module): name a layer that runs once"
        )
    if (
        saved["calls"] == 0
        or not isinstance(activation, torch.Tensor)
        or activation.ndim not in (3, 4)
    ):
        raise PathvizError(
            f"--layer {layer!r}: its output is neither a feature map (N, C, h, w) nor "
            "tokens (N, tokens, D)"
        )
    if activation._version != saved["version"]:
        # Only reachable through a view that aliases the output (e.g. a layer returning its
        # input, changed in place later): the kept values are no longer the layer's output.
        raise PathvizError(
            f"--layer {layer!r}: its output is changed in place later in the network through "
            "a view; name the layer before or after it"
        )
    return activation


def cam_from(activation, grads, plus_plus: bool, eps: float = 0.0):
    """Signed class-activation map (N, h, w) from a layer's activations and gradients.
    Grad-CAM++'s alpha is g^2 / (2 g^2 + sum(A) g^3 + eps), 0 where that denominator is 0;
    pytorch-grad-cam's eps of 1e-6 outweighs 2 g^2 wherever |g| < ~1e-3 (raw logits of
    small nets), so by default there is none, as in the paper."""
    import torch

    if plus_plus:
        g2, g3 = grads.pow(2), grads.pow(3)
        summed = activation.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * g2 + summed * g3 + eps
        alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
        weights = (alpha * torch.relu(grads)).sum(dim=(2, 3))
    else:
        weights = grads.mean(dim=(2, 3))
    return (weights[:, :, None, None] * activation).sum(dim=1)
