"""The DeepLIFT rules in multiplier form, as torch.autograd.Functions.

Every nonlinear call site of the rewritten model becomes a :class:`RuleSite`. A site is run
three ways (``Pairs.mode``): "plain" (the op itself), "reference" (the op on the background
references, remembering its input and output) and "explain" (the op on the (patch, reference)
pairs, whose backward returns the DeepLIFT multipliers instead of the gradient). The pairs are
laid out patch-major: row ``i * B + j`` pairs patch i with reference j, so a reference's
activations broadcast over the pairs as a (1, B, ...) view, and the references run through the
network once per call, not once per pair.

Rules (x: the pair's input at the site, r: the reference's, m: the multiplier):
- elementwise f (ReLU, GELU, Sigmoid, ...): rescale, m = (f(x) - f(r)) / (x - r), and the
  derivative at the midpoint (x + r) / 2 where |x - r| < 1e-6;
- max pooling: each window's output difference max(x_w) - max(r_w) goes to the argmax of x
  (the part above the reference's max) and to the argmax of r (the part below it), split by the
  cross max so that the two parts add up exactly; overlapping windows accumulate
  (scatter-add), then the sums are divided by x - r at each input position;
- output: the explained logit (none), the rescale rule on the target's logit (sigmoid), or for
  softmax the average gradient of p_t along the straight line from the reference's logits z_r
  to the pair's logits z_x (composite Gauss-Legendre, 16 panels x 8 nodes, in float64), whose
  dot product with z_x - z_r is p_t(z_x) - p_t(z_r) to ~1e-12; the remaining quadrature
  residual is put along z_x - z_r so that the identity holds to float rounding.
Linear ops need no rule: their gradient is their multiplier.

This module imports torch at the top: only :func:`deeplift.deeplift` imports it, when it runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import PathvizError

SMALL_STEP = 1e-6  # |x - r| below this: the midpoint derivative instead of the difference quotient


class Pairs:
    """State shared by every rule site of one rewritten model."""

    def __init__(self):
        self.mode = "plain"
        self.n_refs = 1
        self.n_rows = 0  # rows of the batch now running: references, or (patch, reference) pairs


def _by_reference(t, n_refs: int):
    """(P, ...) pair rows as (N, B, ...)."""
    return t.reshape(-1, n_refs, *t.shape[1:])


class Rescale(torch.autograd.Function):
    """Elementwise op; backward: the rescale multipliers (midpoint derivative at tiny steps)."""

    @staticmethod
    def forward(ctx, x, ref_in, ref_out, op, n_refs):
        y = op(x)
        ctx.save_for_backward(x, y, ref_in, ref_out)
        ctx.op, ctx.n_refs = op, n_refs
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, ref_in, ref_out = ctx.saved_tensors
        b = ctx.n_refs
        step = _by_reference(x, b) - ref_in.unsqueeze(0)
        rise = _by_reference(y, b) - ref_out.unsqueeze(0)
        small = step.abs() < SMALL_STEP
        multiplier = rise / torch.where(small, torch.ones_like(step), step)
        if bool(small.any()):
            with torch.enable_grad():
                mid = ((_by_reference(x, b) + ref_in.unsqueeze(0)) / 2).detach()
                mid.requires_grad_(True)
                slope = torch.autograd.grad(ctx.op(mid).sum(), mid)[0]
            multiplier = torch.where(small, slope, multiplier)
        return grad * multiplier.reshape(x.shape), None, None, None, None


class MaxPoolMultipliers(torch.autograd.Function):
    """Max pooling; backward: window differences to the argmaxes of x and r, accumulated over
    overlapping windows, divided by x - r."""

    @staticmethod
    def forward(ctx, x, ref_in, ref_out, ref_index, pool, n_refs):
        y, index = pool(x)
        ctx.save_for_backward(x, y, index, ref_in, ref_out, ref_index)
        ctx.n_refs = n_refs
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, index, ref_in, ref_out, ref_index = ctx.saved_tensors
        b, p, c = ctx.n_refs, x.shape[0], x.shape[1]
        y_x, y_r = _by_reference(y, b), ref_out.unsqueeze(0)
        cross = torch.maximum(y_x, y_r)
        g = _by_reference(grad, b)
        above = (g * (cross - y_r)).reshape(p, c, -1)  # to the argmax of x
        below = (g * (y_x - cross)).reshape(p, c, -1)  # to the argmax of r
        r_index = ref_index.unsqueeze(0).expand(len(g), *ref_index.shape).reshape(p, c, -1)
        total = torch.zeros_like(x.reshape(p, c, -1))
        total.scatter_add_(2, index.reshape(p, c, -1), above)
        total.scatter_add_(2, r_index, below)
        step = (_by_reference(x, b) - ref_in.unsqueeze(0)).reshape(p, c, -1)
        nonzero = step != 0  # a window's share is 0 wherever x - r is 0 (see the rule)
        multiplier = torch.where(
            nonzero, total / torch.where(nonzero, step, torch.ones_like(step)), 0.0
        )
        return multiplier.reshape(x.shape), None, None, None, None, None


class RuleSite(nn.Module):
    """One nonlinear call site. ``op(x, *args, **kwargs)`` computes the op (kind
    "elementwise"), or returns (values, argmax indices) (kind "max")."""

    def __init__(self, pairs: Pairs, kind: str, op, label: str):
        super().__init__()
        self.pairs, self.kind, self.op, self.label = pairs, kind, op, label
        self.reference: tuple | None = None

    def forward(self, x, *args, **kwargs):
        def op(t):
            return self.op(t, *args, **kwargs)

        mode = self.pairs.mode
        if mode == "plain":
            return op(x) if self.kind == "elementwise" else op(x)[0]
        if x.shape[0] != self.pairs.n_rows:  # a reshape folded the batch: pairs would mix
            raise PathvizError(
                f"DeepLIFT: {self.label} gets a tensor whose first axis is not the batch "
                f"{tuple(x.shape)}; use -mth gradient"
            )
        if mode == "reference":
            out = op(x)
            if self.kind == "elementwise":
                self.reference = (x.detach(), out.detach())
                return out
            self.reference = (x.detach(), out[0].detach(), out[1])
            return out[0]
        if self.kind == "elementwise":
            return Rescale.apply(x, *self.reference, op, self.pairs.n_refs)
        return MaxPoolMultipliers.apply(x, *self.reference, op, self.pairs.n_refs)

    def extra_repr(self) -> str:
        return f"{self.kind}: {self.label}"


# -- the explained output ----------------------------------------------------------------------
PANELS, NODES = 16, 8


def softmax_path_multipliers(z_x, z_r, target):
    """(P, C) multipliers m with m . (z_x - z_r) = p_t(z_x) - p_t(z_r): the gradient of p_t
    averaged along z_r -> z_x (composite Gauss-Legendre in float64), the quadrature residual
    put along z_x - z_r. ``z_r`` broadcasts against ``z_x``; ``target`` (P,) class indices."""
    z_x, z_r = z_x.double(), z_r.double().expand_as(z_x)
    step = z_x - z_r
    nodes, weights = np.polynomial.legendre.leggauss(NODES)
    edges = np.linspace(0.0, 1.0, PANELS + 1)
    alphas = (
        (edges[:-1, None] + edges[1:, None]) / 2 + np.outer(np.diff(edges) / 2, nodes)
    ).ravel()
    w = (np.outer(np.diff(edges) / 2, weights)).ravel()
    alphas_t = torch.as_tensor(alphas, dtype=torch.float64, device=z_x.device)
    w_t = torch.as_tensor(w, dtype=torch.float64, device=z_x.device)
    onehot = torch.nn.functional.one_hot(target, z_x.shape[1]).double()
    points = z_r.unsqueeze(0) + alphas_t.view(-1, 1, 1) * step.unsqueeze(0)  # (A, P, C)
    p = torch.softmax(points, dim=2)
    p_t = (p * onehot).sum(2, keepdim=True)
    gradients = p_t * (onehot - p)  # d p_t / d z_c = p_t (delta_tc - p_c)
    multipliers = (w_t.view(-1, 1, 1) * gradients).sum(0)
    exact = (torch.softmax(z_x, 1) * onehot).sum(1) - (torch.softmax(z_r, 1) * onehot).sum(1)
    residual = exact - (multipliers * step).sum(1)
    norm = (step * step).sum(1)
    safe = norm > 1e-30
    correction = torch.where(safe, residual / torch.where(safe, norm, torch.ones_like(norm)), 0.0)
    return multipliers + correction.unsqueeze(1) * step


def _sigmoid_multipliers(z, z_r, target):
    """Rescale rule on the target's logit: zero on the other logits."""
    pick = target.view(-1, 1)
    step = (z - z_r).gather(1, pick).squeeze(1)
    small = step.abs() < SMALL_STEP
    s_x = torch.sigmoid(z.gather(1, pick).squeeze(1))
    s_r = torch.sigmoid(z_r.gather(1, pick).squeeze(1))
    mid = torch.sigmoid((z + z_r).gather(1, pick).squeeze(1) / 2)
    quotient = (s_x - s_r) / torch.where(small, torch.ones_like(step), step)
    onehot = torch.nn.functional.one_hot(target, z.shape[1]).to(z.dtype)
    return onehot * torch.where(small, mid * (1 - mid), quotient).unsqueeze(1)


class OutputMultipliers(torch.autograd.Function):
    """The explained output of each pair (logit, sigmoid or softmax probability of its
    target); backward: the output rule's multipliers on the logits."""

    @staticmethod
    def forward(ctx, z, z_ref, target, output, n_refs):
        ctx.save_for_backward(z, z_ref, target)
        ctx.output, ctx.n_refs = output, n_refs
        pick = target.view(-1, 1)
        if output == "sigmoid":
            return torch.sigmoid(z.gather(1, pick).squeeze(1))
        if output == "softmax":
            return torch.softmax(z, 1).gather(1, pick).squeeze(1)
        return z.gather(1, pick).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        z, z_ref, target = ctx.saved_tensors
        z_r = z_ref.unsqueeze(0).expand(len(z) // ctx.n_refs, *z_ref.shape).reshape(z.shape)
        if ctx.output == "softmax":
            multipliers = softmax_path_multipliers(z, z_r, target).to(z.dtype)
        elif ctx.output == "sigmoid":
            multipliers = _sigmoid_multipliers(z, z_r, target)
        else:
            multipliers = torch.nn.functional.one_hot(target, z.shape[1]).to(z.dtype)
        return grad.unsqueeze(1) * multipliers, None, None, None, None
