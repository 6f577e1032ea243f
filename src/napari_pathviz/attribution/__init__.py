"""Pixel attributions for patches: one entry point, one result type, one module per method.

Methods: ``gradient`` (SHAP expected gradients, batched and stratified), ``deep`` (DeepLIFT /
DeepSHAP on a functionally equal rewrite of the model), ``gradcam`` and ``gradcampp`` (on a
convolutional block or a transformer block's tokens), and, for vision transformers only,
``rollout`` (attention rollout) and ``chefer`` (gradient-weighted attention relevance). The
engine imports no napari; torch is imported where it runs.
"""

from __future__ import annotations

from ..errors import PathvizError
from .result import AttributionResult

# PIXEL_METHODS explain any patch classifier (DeepLIFT refuses layers it has no rule for);
# ATTENTION_METHODS need attention modules (a vision transformer) and refuse a CNN.
PIXEL_METHODS = ("gradient", "deep", "gradcam", "gradcampp")
ATTENTION_METHODS = ("rollout", "chefer")
METHODS = PIXEL_METHODS + ATTENTION_METHODS


def attribute(
    model,
    inputs,
    method: str,
    *,
    background=None,
    target="predicted",
    output: str = "none",
    **options,
) -> AttributionResult:
    """Attributions of model-ready ``inputs`` (N, C, H, W) for ``target``: "predicted", a class
    index, or one index per patch. ``background`` (B, C, H, W) is needed by ``gradient``;
    ``options`` go to the method (n_samples, local_smoothing, layer, batch_size, ...)."""
    if len(inputs) == 0:
        raise PathvizError("no patches to explain (the selection is empty)")
    if method == "gradient":
        from .gradients import expected_gradients

        if background is None:
            raise PathvizError("method 'gradient' needs background patches")
        return expected_gradients(
            model, inputs, background, target=target, output=output, **options
        )
    if method == "deep":
        from .deeplift import deeplift

        if background is None:
            raise PathvizError("method 'deep' needs background patches (references)")
        return deeplift(model, inputs, background, target=target, output=output, **options)
    if method in ("gradcam", "gradcampp"):
        from .gradcam import grad_cam

        return grad_cam(
            model, inputs, target=target, output=output, plus_plus=method == "gradcampp", **options
        )
    if method == "rollout":
        from .rollout import attention_rollout

        return attention_rollout(model, inputs, target=target, output=output, **options)
    if method == "chefer":
        from .chefer import chefer

        return chefer(model, inputs, target=target, output=output, **options)
    raise PathvizError(f"-mth/--method must be one of {', '.join(METHODS)}, got {method!r}")


__all__ = ["ATTENTION_METHODS", "METHODS", "PIXEL_METHODS", "AttributionResult", "attribute"]
