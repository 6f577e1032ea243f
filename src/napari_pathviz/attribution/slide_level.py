"""Pixels to slide: expected-gradients attributions of a SLIDE-level prediction down to the
pixels of single patches, through the patch encoder and the slide-level head.

For the explained patch i of a bag, the function explained is
``g(x) = head(bag with patch i's features replaced by encoder(x))[c]``: the other patches'
features are computed once and held constant, and only patch i's pixels move along the path
from a baseline patch b to the patch itself. Expected gradients
(:func:`.gradients.expected_gradients`, its batched, stratified estimator) then give a map whose
sum is ``g(x_i) - E_b g(b)``: how much of the slide logit the patch's pixels account for
against a baseline patch in its place. ``completeness_error`` reports how far the sum is from it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import PathvizError
from .result import AttributionResult

BAG_ELEMENTS_PER_BATCH = 1 << 24  # samples x patches x features held at once (64 MB in fp32)


def _patch_in_bag(encoder, head, features, index: int):
    """The module x -> head(bag with row ``index`` = encoder(x)), for a batch of x."""
    import torch
    from torch import nn

    class PatchInBag(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, head
            self.register_buffer("bag", features)
            mask = torch.zeros(len(features), 1, dtype=features.dtype, device=features.device)
            mask[index] = 1
            self.register_buffer("mask", mask)

        def forward(self, x):
            patch = self.encoder(x).to(self.bag.dtype)  # (B, D)
            if replacing is not None:  # an attention head of ours: O(B n) memory, not O(B n D)
                return replacing(patch)
            # Row ``index`` of each sample's bag is the sample's features; the others are fixed.
            bags = self.bag * (1 - self.mask) + patch[:, None, :] * self.mask
            return self.head(bags)

    replacing = head.replacing_one(features, index) if hasattr(head, "replacing_one") else None
    return PatchInBag().eval()


def explain_slide_pixels(
    model,
    inputs,
    features,
    indices,
    background,
    *,
    target: int | str = "predicted",
    n_samples: int = 400,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> AttributionResult:
    """Expected gradients of the slide logit ``target`` (a class index, or "predicted": the
    slide's) for the patches at ``indices`` of the bag.

    ``model`` is a :class:`napari_pathviz.slide_level.TwoStageModel`; ``inputs`` the explained
    patches, model-ready ((k, C, H, W), row j is patch ``indices[j]``); ``features`` the bag's
    encoder features (n, D); ``background`` model-ready baseline patches (B, C, H, W). Returns
    one map per explained patch (``patch_index`` = ``indices``), its completeness error, and
    in ``metadata`` the slide logit explained and the class name."""
    import torch

    from .gradients import expected_gradients

    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.array(features))  # a writable copy
    features = features.to(device=inputs.device, dtype=inputs.dtype)
    indices = np.asarray(indices, np.int64)
    if len(indices) != len(inputs):
        raise PathvizError(f"{len(indices)} patch indices for {len(inputs)} explained patches")
    if indices.size and not (indices.min() >= 0 and indices.max() < len(features)):
        raise PathvizError(f"patch indices must lie in 0-{len(features) - 1} (the bag's rows)")
    encoder, head = model.encoder.model, model.head
    with torch.no_grad():
        slide_logits = head(features)
    target_class = int(slide_logits.argmax()) if target == "predicted" else int(target)
    if not 0 <= target_class < len(slide_logits):
        raise PathvizError(f"target class {target} is out of range (0-{len(slide_logits) - 1})")
    if batch_size is None:
        per_sample = len(features) if hasattr(head, "replacing_one") else features.numel()
        batch_size = int(np.clip(BAG_ELEMENTS_PER_BATCH // max(per_sample, 1), 1, 64))
    results = []
    for j, index in enumerate(indices):
        wrapped = _patch_in_bag(encoder, head, features, int(index))
        results.append(
            expected_gradients(
                wrapped,
                inputs[j : j + 1],
                background,
                target=target_class,
                output="none",
                n_samples=n_samples,
                seed=seed + j,
                batch_size=batch_size,
                cancelled=cancelled,
            )
        )
        if progress is not None:
            progress(j + 1, len(indices))
    return _joined(results, indices, target_class, model, slide_logits, n_samples)


def _joined(results, indices, target_class, model, slide_logits, n_samples) -> AttributionResult:
    def stack(name):
        return np.concatenate([getattr(r, name) for r in results]) if results else np.empty(0)

    return AttributionResult(
        method="gradient",
        maps=stack("maps"),
        targets=np.full(len(indices), target_class, np.int64),
        logits=stack("logits"),
        probabilities=stack("probabilities"),
        per_channel=stack("per_channel"),
        completeness_error=stack("completeness_error"),
        output_delta=stack("output_delta"),
        patch_index=indices,
        metadata={
            "explains": "slide",
            "class_name": model.class_names[target_class],
            "slide_logit": float(slide_logits[target_class]),
            "n_samples": n_samples,
        },
    )


def top_attended(attention, k: int) -> np.ndarray:
    """The rows of the ``k`` largest attention weights, largest first."""
    attention = np.asarray(attention)
    k = min(int(k), len(attention))
    return np.argsort(-attention, kind="stable")[:k]
