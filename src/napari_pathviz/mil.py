"""Slide-level heads over a bag of patch features: attention-based multiple instance learning.

A head takes the features of a slide's patches, ``(n, D)`` (or a batch of bags ``(B, n, D)``),
and returns the slide's logits ``(n_classes,)`` (or ``(B, n_classes)``). Besides ``forward``,
the heads here expose what the explanations read:

- ``attend(h)`` -> ``(a, t)``: the attention weights ``a`` (``(..., n)``, softmax over the
  patches, summing to 1) and the transformed patch features ``t`` (``(..., n, hidden)``) that
  the attention pools;
- ``patch_logits(h)``: the head's classifier applied to each patch's transformed feature,
  ``(..., n, n_classes)``. Because the slide logit is ``classifier(sum_i a_i t_i)`` and the
  classifier is affine while the weights sum to 1, ``sum_i a_i patch_logits_i`` equals the
  slide logit exactly: the per-patch contributions ``a_i * patch_logits_i`` add up to it.

Both are built from ``torch.nn`` only and load from a state dict or safetensors with a model
card naming the class (no trust needed: :func:`napari_pathviz._model_files.card_factory`).

References: Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance learning"
(gated attention); Lu et al. 2021, "Data-efficient and weakly supervised computational
pathology on whole-slide images" (CLAM; :class:`ClamSB` keeps CLAM_SB's parameter names, so a
CLAM checkpoint's state dict loads as it is).
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttention(nn.Module):
    """Gated attention scores: ``w^T (tanh(V t) * sigmoid(U t))`` per patch (Ilse et al. eq. 9),
    with CLAM's names for V (``attention_a``), U (``attention_b``) and w (``attention_c``)."""

    def __init__(self, dim: int, attention_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(dim, attention_dim), nn.Sigmoid())
        if dropout:
            self.attention_a.append(nn.Dropout(dropout))
            self.attention_b.append(nn.Dropout(dropout))
        self.attention_c = nn.Linear(attention_dim, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(..., n, dim) -> (..., n) raw scores (before the softmax over patches)."""
        return self.attention_c(self.attention_a(t) * self.attention_b(t)).squeeze(-1)


class _AttentionHead(nn.Module):
    """What both heads share: ``embed`` (patch feature -> t), ``attention`` (t -> score) and an
    affine ``classifier`` of the attention-pooled t."""

    in_dim: int
    n_classes: int

    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scores(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _classify(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._embed(h)
        return torch.softmax(self._scores(t), dim=-1), t

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, t = self.attend(h)
        pooled = (a.unsqueeze(-1) * t).sum(dim=-2)
        return self._classify(pooled)

    def patch_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self._classify(self._embed(h))

    def replacing_one(self, bag: torch.Tensor, index: int):
        """A function ``f (B, D) -> logits (B, n_classes)``: the slide logits of ``bag`` (n, D)
        with row ``index`` replaced by each of the B features ``f``, equal to
        ``self(bag with row index = f)`` but in O(B (n + hidden)) memory instead of
        O(B n D): the other rows' transformed features and scores are computed once. This is
        what explaining one patch against a whole slide's bag needs (pixels to slide)."""
        with torch.no_grad():
            t_fixed = self._embed(bag)  # (n, hidden)
            s_fixed = self._scores(t_fixed)  # (n,)
        keep = torch.ones_like(s_fixed, dtype=torch.bool)
        keep[index] = False

        def logits(f: torch.Tensor) -> torch.Tensor:
            t = self._embed(f)  # (B, hidden)
            s = self._scores(t)  # (B,)
            scores = torch.where(keep, s_fixed, s[:, None])  # (B, n): row index is the sample's
            a = torch.softmax(scores, dim=-1)
            pooled = (a * keep) @ t_fixed + a[:, index, None] * t
            return self._classify(pooled)

        return logits


class GatedAttentionMIL(_AttentionHead):
    """Gated attention MIL (Ilse et al. 2018): patch features -> Linear + ReLU (``hidden``) ->
    gated attention pooling -> Linear classifier."""

    def __init__(
        self,
        in_dim: int,
        hidden: int = 128,
        n_classes: int = 2,
        attention_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        if dropout:
            self.embed.append(nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attention_dim or hidden, dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def _embed(self, h):
        return self.embed(h)

    def _scores(self, t):
        return self.attention(t)

    def _classify(self, pooled):
        return self.classifier(pooled)


class ClamSB(_AttentionHead):
    """CLAM single branch (Lu et al. 2021), inference part: ``attention_net`` = Linear + ReLU
    (+ Dropout) + gated attention, ``classifiers`` = Linear on the pooled feature. The
    ``instance_classifiers`` (CLAM's clustering loss, used in training only) are kept so that a
    CLAM checkpoint loads strictly; they take no part in the slide prediction."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden: int = 512,
        attention_dim: int = 256,
        n_classes: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        # CLAM's layout: index 3 is the gated attention, whether or not dropout is used.
        self.attention_net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            GatedAttention(hidden, attention_dim, dropout),
        )
        self.classifiers = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))

    def _embed(self, h):
        return self.attention_net[2](self.attention_net[1](self.attention_net[0](h)))

    def _scores(self, t):
        return self.attention_net[3](t)

    def _classify(self, pooled):
        return self.classifiers(pooled)


def head_input_dim(head: nn.Module) -> int | None:
    """The feature size a head takes: its ``in_dim``, else the first Linear's in_features."""
    dim = getattr(head, "in_dim", None)
    if isinstance(dim, int):
        return dim
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None


class SmallConvEncoder(nn.Module):
    """A small convolutional patch encoder (two strided convolutions, global average pooling,
    a Linear to ``dim`` features): the demo's and the tests' stand-in for a foundation-model
    encoder such as UNI or Virchow, cheap enough to train on the CPU in seconds."""

    def __init__(self, dim: int = 16, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.project = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))
