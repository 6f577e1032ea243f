"""Gradient-weighted attention relevance for vision transformers (Chefer, Gur & Wolf 2021,
"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", ICCV, arXiv 2103.15679; the ViT case of "Transformer Interpretability Beyond
Attention Visualization", CVPR, arXiv 2012.09838).

Starting from the identity, each layer (in forward order) adds its relevance mixing:
``R <- R + mean_heads(clamp(dA * A, min=0)) @ R``, where ``A`` is the layer's attention
(B, heads, N, N) and ``dA`` the gradient of the explained output for the target class with
respect to it. The map is the class token's row of ``R`` over the patch tokens, spread over
each token's pixels. Unlike rollout it depends on the class explained.
"""

from __future__ import annotations

from .result import AttributionResult
from .rollout import explained_score, run_attention_method


def chefer_relevance(attentions, gradients):
    """Chefer et al.'s relevance (B, N, N) from per-layer attentions and their gradients
    (B, heads, N, N), in forward order."""
    import torch

    relevance = None
    for attention, gradient in zip(attentions, gradients, strict=True):
        mixed = (gradient * attention).clamp(min=0).mean(dim=1)
        if relevance is None:
            n = mixed.shape[-1]
            relevance = torch.eye(n, dtype=mixed.dtype, device=mixed.device).expand_as(mixed)
        relevance = relevance + mixed @ relevance
    return relevance


def chefer(model, inputs, **options) -> AttributionResult:
    """Chefer et al.'s gradient-weighted relevance maps of ``inputs`` (N, C, H, W) for their
    target class."""
    return run_attention_method(model, inputs, "chefer", _chefer_batch, **options)


def _chefer_batch(recorder, x, logits, targets, output):
    attentions = recorder.attentions()
    gradients = recorder.gradients(explained_score(logits, targets, output))
    return chefer_relevance([a.detach() for a in attentions], [g.detach() for g in gradients])
