"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers",
arXiv 2005.00928) for vision transformers.

Per layer the attention is fused over heads (``head_fusion``: the mean, as the paper, or the
max or min, as jacobgil/vit-explain offers), optionally the weakest ``discard_ratio`` share of
the fused matrix set to 0 (vit-explain's discard; its entry 0, the class token's attention to
itself, is never discarded), the identity added (the residual connection) and each row
normalised to sum to 1; the layers are multiplied in order, ``R = A_L ... A_2 A_1``. (vit-explain
divides by ``a.sum(dim=-1)`` without keepdim, which scales columns, not rows, once entries are
discarded; here rows sum to 1 as in the paper.) The map of a patch is the class token's row of ``R`` over the patch
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
HEAD_FUSIONS = ("mean", "max", "min")


def check_rollout_options(head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
    """Refuses, in one line naming the option, a head fusion or discard ratio rollout cannot
    use."""
    if head_fusion not in HEAD_FUSIONS:
        raise PathvizError(
            f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}"
        )
    ratio_is_number = isinstance(discard_ratio, (int, float, np.number)) and not isinstance(
        discard_ratio, bool
    )
    if not ratio_is_number or not 0 <= discard_ratio < 1:  # NaN fails both comparisons
        raise PathvizError(
            "--discard-ratio must be from 0 up to, not including, 1 (the share of each "
            f"layer's weakest attention set to 0), got {discard_ratio!r}"
        )


def fuse_heads(attention, head_fusion: str = "mean"):
    """(B, heads, N, N) -> (B, N, N): the mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def discard_weakest(fused, discard_ratio: float):
    """``fused`` (B, N, N) with, per sample, its ``int(N * N * discard_ratio)`` smallest entries
    set to 0 (ties in memory order), except entry (0, 0): vit-explain's discard."""
    import torch

    flat = fused.reshape(len(fused), -1)
    count = int(flat.shape[-1] * discard_ratio)
    if count == 0:
        return fused
    weakest = flat.argsort(dim=-1, stable=True)[:, :count]
    dropped = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, weakest, True)
    dropped[:, 0] = False  # the class token's attention to itself stays
    return flat.masked_fill(dropped, 0).reshape(fused.shape)


def rollout_relevance(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Abnar & Zuidema's rollout (B, N, N) of per-layer attentions (B, heads, N, N), in forward
    order; heads fused by ``head_fusion``, the weakest ``discard_ratio`` of each layer's fused
    attention dropped first (see :func:`discard_weakest`)."""
    import torch

    relevance = None
    for attention in attentions:
        mixed = discard_weakest(fuse_heads(attention, head_fusion), discard_ratio)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        relevance = mixed if relevance is None else mixed @ relevance
    return relevance


def attention_rollout(
    model, inputs, *, head_fusion: str = "mean", discard_ratio: float = 0.0, **options
) -> AttributionResult:
    """Rollout maps of ``inputs`` (N, C, H, W): the class token's rolled-out attention to each
    patch token, over that token's pixels. ``head_fusion`` "mean" (the paper), "max" or "min";
    ``discard_ratio`` in [0, 1) (vit-explain's defaults are "max" and 0.9)."""
    check_rollout_options(head_fusion, discard_ratio)

    def relevance_of(recorder, x, logits, targets, output):
        import torch

        with torch.no_grad():
            attentions = [a.detach() for a in recorder.attentions()]
            return rollout_relevance(attentions, head_fusion, discard_ratio)

    result = run_attention_method(model, inputs, "rollout", relevance_of, **options)
    result.metadata.update(head_fusion=head_fusion, discard_ratio=float(discard_ratio))
    return result


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
