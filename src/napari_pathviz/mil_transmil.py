"""TransMIL (Shao et al. 2021, "TransMIL: Transformer based correlated multiple instance
learning for whole slide image classification"), on features, under the parameter names of
szc19990412/TransMIL's ``models/TransMIL.py`` so that its checkpoints load as they are.

Its forward, as published: each patch feature goes through ``_fc1`` (Linear + ReLU); the bag
is made a square number of tokens by appending copies of its first tokens; a learned class
token is put first; two Transformer layers (pre-norm Nystrom attention with a residual) with
the PPEG position encoding between them (three depthwise convolutions, 7/5/3, plus identity,
over the tokens laid out on the square grid, the class token left out); the class token's
final LayerNorm goes through ``_fc2`` to the logits.

The attention is the ``nystrom_attention`` package's (the one TransMIL imports), imported when
the head is built: ``pip install nystrom-attention`` (the ``model`` extra has it).

No per-patch attention is given: the Nystrom attention's rows are an approximation (a product
with a pseudo-inverse, not a softmax: neither non-negative nor summing to 1), a depthwise
convolution of the values along the sequence and PPEG's convolutions mix neighbouring tokens,
and a LayerNorm sits before the classifier; so no attention column adds up to the logit, and
:func:`.slide_level.slide_outputs` gives gradient x feature only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mil_layouts import TRANSMIL as TRANSMIL_LAYOUTS


def _nystrom_attention(dim: int, dropout: float) -> nn.Module:
    try:
        from nystrom_attention import NystromAttention
    except ImportError as exc:
        raise ImportError(
            "TransMIL needs the nystrom_attention package: pip install nystrom-attention"
        ) from exc
    # TransMIL's settings: 8 heads of dim/8, dim/2 landmarks, 6 pseudo-inverse iterations,
    # the residual convolution of the values.
    return NystromAttention(
        dim=dim,
        dim_head=dim // 8,
        heads=8,
        num_landmarks=dim // 2,
        pinv_iterations=6,
        residual=True,
        dropout=dropout,
    )


class _TransLayer(nn.Module):
    """Pre-norm attention with a residual: ``x + attn(norm(x))`` (TransMIL's TransLayer)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _nystrom_attention(dim, dropout)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class _PPEG(nn.Module):
    """TransMIL's position encoding: the patch tokens on their ``side x side`` grid, plus three
    depthwise convolutions of it (kernels 7, 5, 3); the class token passes unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, side: int):
        cls, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL on a bag ``(n, in_dim)`` -> logits ``(n_classes,)``, or on bags ``(B, n,
    in_dim)`` -> ``(B, n_classes)``. TransMIL's own code is fixed at ``in_dim=1024``,
    ``dim=512``; other sizes are its forks'. In a batch, the Nystrom pseudo-inverse is scaled
    by the largest row and column sums over the whole batch, so a bag's logits in a batch can
    differ slightly from its own (as in TransMIL's code, which trains one bag at a time)."""

    checkpoint_layouts = TRANSMIL_LAYOUTS
    checkpoint_layout: str | None = None

    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, dropout=0.1):
        super().__init__()
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.pos_layer = _PPEG(dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = _TransLayer(dim, dropout)
        self.layer2 = _TransLayer(dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        single = h.ndim == 2
        x = self._fc1(h[None] if single else h)
        n = x.shape[1]
        if n == 0:
            raise ValueError("TransMIL needs at least one patch in the bag")
        side = math.ceil(math.sqrt(n))
        x = torch.cat([x, x[:, : side * side - n]], dim=1)  # squared by repeating the first
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_layer(self.layer1(x), side)
        logits = self._fc2(self.norm(self.layer2(x))[:, 0])
        return logits[0] if single else logits
