"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers",
arXiv 2005.00928) for vision transformers.

Per layer the attention is averaged over heads, the identity added (the residual connection)
and each row normalised to sum to 1; the layers are multiplied in order,
``R = A_L ... A_2 A_1``. The map of a patch is the class token's row of ``R`` over the patch
tokens (class and register tokens dropped), each token's value spread over its patch pixels.
The attention comes from hooks on the model's attention modules (see ``_attention``).
Rollout does not depend on the class explained; the target only labels the result.
"""

from __future__ import annotations

import numpy as np

from ..errors import Cancelled, PathvizError
from ._attention import NO_ATTENTION, AttentionRecorder, class_row, token_grid, upsample_tokens
from ._target import explained_output, forward_checked, resolve_targets
from .result import AttributionResult

DEFAULT_BATCH_SIZE = 64  # patches per forward pass


def rollout_relevance(attentions):
    """Abnar & Zuidema's rollout (B, N, N) of per-layer attentions (B, heads, N, N), in forward
    order."""
    import torch

    relevance = None
    for attention in attentions:
        mixed = attention.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        relevance = mixed if relevance is None else mixed @ relevance
    return relevance


def attention_rollout(model, inputs, **options) -> AttributionResult:
    """Rollout maps of ``inputs`` (N, C, H, W): the class token's rolled-out attention to each
    patch token, over that token's pixels."""
    return run_attention_method(model, inputs, "rollout", _rollout_batch, **options)


def _rollout_batch(recorder, x, logits, targets, output):
    import torch

    with torch.no_grad():
        return rollout_relevance([a.detach() for a in recorder.attentions()])


def run_attention_method(
    model,
    inputs,
    method: str,
    relevance_of,
    *,
    target="predicted",
    output: str = "none",
    batch_size: int = DEFAULT_BATCH_SIZE,
    layer: str | None = None,
    progress=None,
    cancelled=None,
) -> AttributionResult:
    """The batch loop shared by rollout and chefer: a forward pass with the attention recorded,
    ``relevance_of(recorder, x, logits, targets, output)`` -> (B, N, N) token relevance, its
    class-token row over the patch tokens, upsampled to the input's pixels. ``layer`` is
    accepted for the callers that pass Grad-CAM's options to every method, and must be None."""
    import torch

    if layer:
        raise PathvizError(
            f"--layer {layer!r}: {method} uses every attention layer; --layer is for Grad-CAM"
        )

    model.eval()
    maps, all_logits, all_targets = [], [], []
    grid, layers = None, 0
    with AttentionRecorder(model, method) as recorder:
        if not recorder.modules:
            raise PathvizError(NO_ATTENTION.format(method=method))
        for start in range(0, len(inputs), batch_size):
            if cancelled is not None and cancelled():
                raise Cancelled("attribution cancelled")
            # an input that requires grad keeps nn.MultiheadAttention off its fused fast path
            # (whose weights are not the tensor the output was computed from)
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            recorder.clear()
            with torch.enable_grad():
                logits = forward_checked(model, x)
                per_batch = (
                    target
                    if isinstance(target, (str, int, np.integer))
                    else np.asarray(target)[start : start + batch_size]
                )
                targets = resolve_targets(per_batch, logits.detach())
                relevance = relevance_of(recorder, x, logits, targets, output)
            h, w, extra = token_grid(relevance.shape[-1], x.shape[2], x.shape[3])
            grid, layers = (h, w, extra), len(recorder.calls)
            values = class_row(relevance.detach().float(), extra)
            maps.append(upsample_tokens(values, h, w, x.shape[2:]).cpu().numpy())
            all_logits.append(logits.detach())
            all_targets.append(targets)
            recorder.clear()  # free the graph before the next batch
            if progress is not None:
                progress(min(start + batch_size, len(inputs)), len(inputs))
    h, w, extra = grid
    metadata = {"output": output, "attention_layers": layers, "token_grid": f"{h}x{w}"}
    return _result(method, maps, all_targets, all_logits, {**metadata, "extra_tokens": extra})


def _result(method: str, maps, targets, logits, metadata: dict) -> AttributionResult:
    import torch

    logits = torch.cat(logits).float()
    probs = torch.softmax(logits, 1) if logits.shape[1] > 1 else torch.sigmoid(logits)
    return AttributionResult(
        method=method,
        maps=np.concatenate(maps),
        targets=np.concatenate(targets),
        logits=logits.cpu().numpy(),
        probabilities=probs.cpu().numpy(),
        metadata=metadata,
    )


def explained_score(logits, targets, output: str):
    """The sum over the batch of each patch's explained output for its target class."""
    import torch

    out = explained_output(logits, output)
    index = torch.as_tensor(targets, device=logits.device).view(-1, 1)
    return out.gather(1, index).sum()
