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

:class:`ClamMB` has one attention per class: ``class_attention(h)`` gives them all, ``attend``
the predicted class's, and the contributions add up class by class.

All are built from ``torch.nn`` only and load from a state dict or safetensors with a model
card naming the class (no trust needed: :func:`napari_pathviz._model_files.card_factory`).

References: Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance learning"
(gated attention); Lu et al. 2021, "Data-efficient and weakly supervised computational
pathology on whole-slide images" (CLAM; :class:`ClamSB` and :class:`ClamMB` keep CLAM_SB's and
CLAM_MB's parameter names, and CLAM checkpoints of the known older layouts are renamed to them
on loading: :mod:`.mil_layouts`).
"""

from __future__ import annotations

import torch
from torch import nn

from .mil_layouts import ABMIL as ABMIL_LAYOUTS
from .mil_layouts import ABMIL_GATED as ABMIL_GATED_LAYOUTS
from .mil_layouts import CLAM_MB as CLAM_MB_LAYOUTS
from .mil_layouts import CLAM_SB as CLAM_SB_LAYOUTS
from .mil_layouts import DSMIL as DSMIL_LAYOUTS


class GatedAttention(nn.Module):
    """Gated attention scores: ``w^T (tanh(V t) * sigmoid(U t))`` per patch (Ilse et al. eq. 9),
    with CLAM's names for V (``attention_a``), U (``attention_b``) and w (``attention_c``)."""

    def __init__(self, dim: int, attention_dim: int, dropout: float = 0.0, branches: int = 1):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(dim, attention_dim), nn.Sigmoid())
        if dropout:
            self.attention_a.append(nn.Dropout(dropout))
            self.attention_b.append(nn.Dropout(dropout))
        self.attention_c = nn.Linear(attention_dim, branches)

    def branch_scores(self, t: torch.Tensor) -> torch.Tensor:
        """(..., n, dim) -> (..., n, branches) raw scores, one column per attention branch."""
        return self.attention_c(self.attention_a(t) * self.attention_b(t))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(..., n, dim) -> (..., n) raw scores (before the softmax over patches)."""
        return self.branch_scores(t).squeeze(-1)


class _AttentionHead(nn.Module):
    """What both heads share: ``embed`` (patch feature -> t), ``attention`` (t -> score) and an
    affine ``classifier`` of the attention-pooled t."""

    in_dim: int
    n_classes: int
    checkpoint_layout: str | None = None  # the public layout its weights came in (mil_layouts)

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
    gated attention pooling -> Linear classifier. Loads ABMIL's GatedAttention checkpoints
    (AttentionDeepMIL's names, from feature_extractor_part2 on: :data:`.mil_layouts.ABMIL_GATED`;
    its M, L are ``hidden``, ``attention_dim``, with ``n_classes=1``)."""

    checkpoint_layouts = ABMIL_GATED_LAYOUTS

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


class AttentionMIL(_AttentionHead):
    """Attention MIL without the gate (Ilse et al. 2018, eq. 8): patch features -> Linear + ReLU
    (``hidden``) -> attention ``w^T tanh(V t)`` -> Linear classifier; ``attention`` keeps
    ABMIL's Attention names (``attention.0``, ``attention.2``), and ABMIL checkpoints load
    (:data:`.mil_layouts.ABMIL`)."""

    checkpoint_layouts = ABMIL_LAYOUTS

    def __init__(
        self, in_dim: int, hidden: int = 500, attention_dim: int = 128, n_classes: int = 1
    ):
        super().__init__()
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.attention = nn.Sequential(
            nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1)
        )
        self.classifier = nn.Linear(hidden, n_classes)

    def _embed(self, h):
        return self.embed(h)

    def _scores(self, t):
        return self.attention(t).squeeze(-1)

    def _classify(self, pooled):
        return self.classifier(pooled)


class ClamSB(_AttentionHead):
    """CLAM single branch (Lu et al. 2021), inference part: ``attention_net`` = Linear + ReLU
    + Dropout + gated attention, ``classifiers`` = Linear on the pooled feature, under CLAM's
    parameter names. CLAM's ``instance_classifiers`` (its clustering loss, training only) are
    not built: a checkpoint's are dropped, and said so, when its layout is recognised
    (:data:`.mil_layouts.CLAM_SB`: today's, CLAM 2020-04 to 2024-04 without dropout,
    nn.DataParallel)."""

    checkpoint_layouts = CLAM_SB_LAYOUTS

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
        self.attention_net = _clam_attention_net(in_dim, hidden, attention_dim, dropout, 1)
        self.classifiers = nn.Linear(hidden, n_classes)

    def _embed(self, h):
        return self.attention_net[2](self.attention_net[1](self.attention_net[0](h)))

    def _scores(self, t):
        return self.attention_net[3](t)

    def _classify(self, pooled):
        return self.classifiers(pooled)


def _clam_attention_net(in_dim, hidden, attention_dim, dropout, branches) -> nn.Sequential:
    # CLAM's layout since 2024-04: index 3 is the gated attention, with or without dropout.
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        GatedAttention(hidden, attention_dim, dropout, branches),
    )


class ClamMB(nn.Module):
    """CLAM multi-branch (Lu et al. 2021), inference part: one gated attention branch per
    class over the shared ``attention_net`` embedding t; class c's slide logit is
    ``classifiers[c]`` (a Linear to 1) of the pooled ``sum_i a_ci t_i``. CLAM's parameter
    names; ``instance_classifiers`` dropped as for :class:`ClamSB`.

    ``class_attention(h)`` gives each class's attention ``(..., classes, n)``; ``attend(h)`` the
    predicted class's ``(..., n)``. Class by class, ``sum_i a_ci patch_logits_ic`` is the slide
    logit of c, exactly."""

    checkpoint_layouts = CLAM_MB_LAYOUTS
    checkpoint_layout: str | None = None

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
        self.attention_net = _clam_attention_net(in_dim, hidden, attention_dim, dropout, n_classes)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_classes))

    def _embed(self, h):
        return self.attention_net[2](self.attention_net[1](self.attention_net[0](h)))

    def _scores(self, t):
        """(..., n, hidden) -> (..., classes, n) raw scores."""
        return self.attention_net[3].branch_scores(t).transpose(-1, -2)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-class classifiers as one (classes, hidden) weight and (classes,) bias."""
        weight = torch.cat([c.weight for c in self.classifiers])
        return weight, torch.cat([c.bias for c in self.classifiers])

    def _classify(self, pooled):
        """(..., classes, hidden) pooled per class -> (..., classes) logits."""
        weight, bias = self._weights()
        return (pooled * weight).sum(-1) + bias

    def class_attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._embed(h)
        return torch.softmax(self._scores(t), dim=-1), t

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, t = self.class_attention(h)
        return self._classify(a @ t)

    def attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, t = self.class_attention(h)
        predicted = self._classify(a @ t).argmax(-1)  # (...,)
        index = predicted[..., None, None].expand(*a.shape[:-2], 1, a.shape[-1])
        return a.gather(-2, index).squeeze(-2), t

    def patch_logits(self, h: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights()
        return self._embed(h) @ weight.T + bias

    def replacing_one(self, bag: torch.Tensor, index: int):
        """As :meth:`_AttentionHead.replacing_one`, with one attention per class."""
        with torch.no_grad():
            t_fixed = self._embed(bag)  # (n, hidden)
            s_fixed = self._scores(t_fixed)  # (classes, n)
        keep = torch.ones(s_fixed.shape[-1], dtype=torch.bool, device=s_fixed.device)
        keep[index] = False

        def logits(f: torch.Tensor) -> torch.Tensor:
            t = self._embed(f)  # (B, hidden)
            s = self.attention_net[3].branch_scores(t)[:, :, None]  # (B, classes, 1)
            a = torch.softmax(torch.where(keep, s_fixed, s), dim=-1)  # (B, classes, n)
            pooled = (a * keep) @ t_fixed + a[..., index, None] * t[:, None, :]
            return self._classify(pooled)

        return logits


class _DsmilInstance(nn.Module):
    """DSMIL's FCLayer: one Linear giving each patch's class scores (``fc.0``)."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, n_classes))

    def forward(self, h):
        return self.fc(h)


class _DsmilBag(nn.Module):
    """DSMIL's BClassifier parts: queries ``q``, values ``v``, and ``fcc``, a Conv1d over the
    classes whose kernel spans the whole value vector."""

    def __init__(self, in_dim, n_classes, nonlinear, passing_v, dropout_v):
        super().__init__()
        if nonlinear:
            self.q = nn.Sequential(
                nn.Linear(in_dim, 128), nn.ReLU(), nn.Linear(128, 128), nn.Tanh()
            )
        else:
            self.q = nn.Linear(in_dim, 128)
        if passing_v:
            self.v = nn.Sequential(nn.Dropout(dropout_v), nn.Linear(in_dim, in_dim), nn.ReLU())
        else:
            self.v = nn.Identity()
        self.fcc = nn.Conv1d(n_classes, n_classes, kernel_size=in_dim)


class DSMIL(nn.Module):
    """DSMIL (Li, Li & Eliceiri 2021), dsmil-wsi's MILNet on features, under its names
    (``i_classifier``, ``b_classifier``). Each class c has a critical patch, the one of highest
    instance score; every patch's attention to class c is the softmax over the patches of its
    query's product with the critical patch's (scaled by sqrt(128)); the slide logits are
    ``fcc`` over the attention-pooled values. The logits are DSMIL's bag prediction (its
    default; ``--average`` with the max-instance score is not applied): multi-label, so give
    the card ``"activation": "sigmoid"``.

    ``class_attention(h)`` is each class's attention ``(..., classes, n)``, ``attend(h)`` the
    predicted class's; ``contributions(h)`` ``(..., n, classes)`` sums over the patches to the
    slide logits exactly (fcc mixes the classes' pooled values, so it is not attention x a
    patch logit)."""

    checkpoint_layouts = DSMIL_LAYOUTS
    checkpoint_layout: str | None = None

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        nonlinear: bool = True,
        passing_v: bool = False,
        dropout_v: float = 0.0,
    ):
        super().__init__()
        if passing_v and not nonlinear:
            raise ValueError(
                "nonlinear=False with passing_v=True has the key names of DSMIL's 2020 layout, "
                "which computes otherwise; refused rather than guessed"
            )
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.i_classifier = _DsmilInstance(in_dim, n_classes)
        self.b_classifier = _DsmilBag(in_dim, n_classes, nonlinear, passing_v, dropout_v)

    def _attention_and_values(self, h):
        """(attention (..., classes, n), values (..., n, V))."""
        bag = self.b_classifier
        critical = self.i_classifier(h).argmax(dim=-2)  # (..., classes): top patch per class
        chosen = torch.take_along_dim(h, critical[..., None], dim=-2)  # (..., classes, D)
        queries, critical_queries = bag.q(h), bag.q(chosen)  # (..., n, 128), (..., classes, 128)
        scores = critical_queries @ queries.transpose(-1, -2) / queries.shape[-1] ** 0.5
        return torch.softmax(scores, dim=-1), bag.v(h)

    def _fcc(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.b_classifier.fcc.weight, self.b_classifier.fcc.bias  # (C, C, V), (C,)

    def class_attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._attention_and_values(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, v = self._attention_and_values(h)
        weight, bias = self._fcc()
        pooled = a @ v  # (..., classes, V): DSMIL's B
        return torch.einsum("...kv,ckv->...c", pooled, weight) + bias

    def attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, v = self._attention_and_values(h)
        weight, bias = self._fcc()
        predicted = (torch.einsum("...kv,ckv->...c", a @ v, weight) + bias).argmax(-1)
        index = predicted[..., None, None].expand(*a.shape[:-2], 1, a.shape[-1])
        return a.gather(-2, index).squeeze(-2), v

    def contributions(self, h: torch.Tensor) -> torch.Tensor:
        """(..., n, classes): patch i's share of logit c, ``sum_k a_ki (W_ck . v_i + b_c / C)``
        (the bias shared out as the attention of each of the C pooled vectors sums to 1)."""
        a, v = self._attention_and_values(h)
        weight, bias = self._fcc()
        per_patch = torch.einsum("...nv,ckv->...nck", v, weight) + bias[:, None] / self.n_classes
        return torch.einsum("...kn,...nck->...nc", a, per_patch)


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
