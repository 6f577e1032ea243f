"""What the transformer methods share: the patch grid behind a sequence of tokens, and the
attention matrices of a forward pass, recorded by hooks on the attention modules.

Attention modules are found by type, so a model needs no changes:
- ``nn.MultiheadAttention``: a forward pre-hook makes each call return its per-head weights
  (``need_weights=True, average_attn_weights=False``, whatever the model passed); the output
  the model uses is unchanged.
- a hand-written attention: the convention is an ``nn.Softmax`` module applied to the scores,
  ``attn = self.softmax(q @ k.transpose(-2, -1) * scale)``; its output (B, heads, N, N) or
  (B, N, N) is the attention. ``torch.softmax`` called as a function cannot be hooked, and such
  a model is refused (as is a CNN): "no attention modules found".
"""

from __future__ import annotations

from ..errors import PathvizError

NO_ATTENTION = (
    "no attention modules found (nn.MultiheadAttention, or an nn.Softmax module over the "
    "attention scores): {method} explains vision transformers only"
)
# positions of need_weights and average_attn_weights in nn.MultiheadAttention.forward
_NEED_WEIGHTS, _AVERAGE = 4, 6


def token_grid(n_tokens: int, height: int, width: int) -> tuple[int, int, int]:
    """(h, w, extra): the patch grid of ``n_tokens`` tokens of an ``height`` x ``width`` input
    and the count of leading extra tokens (class and register tokens), ``n_tokens - h * w``.
    The grid is the largest one with the input's aspect ratio that the tokens hold."""
    best = None
    for h in range(1, n_tokens + 1):
        w = round(h * width / height)
        if w >= 1 and h * w <= n_tokens and abs(h / w - height / width) < 1e-6:
            best = (h, w)
    if best is None:
        raise PathvizError(
            f"{n_tokens} tokens do not hold a patch grid of a {height} x {width} input"
        )
    h, w = best
    return h, w, n_tokens - h * w


def tokens_to_grid(tokens, height: int, width: int):
    """(B, N, D) tokens -> (B, D, h, w) feature map of the patch tokens (leading extra tokens
    dropped), as pytorch-grad-cam's ``reshape_transform`` does for a ViT."""
    h, w, extra = token_grid(tokens.shape[1], height, width)
    return tokens[:, extra:].reshape(len(tokens), h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def attention_modules(model) -> list[tuple[str, object]]:
    """The modules whose calls produce attention matrices, by name."""
    from torch import nn

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.MultiheadAttention, nn.Softmax))
    ]


def is_attention_matrix(out) -> bool:
    """An nn.Softmax output shaped like attention, (B, heads, N, N) or (B, N, N), rather than
    a classifier's probabilities (B, K)."""
    import torch

    return isinstance(out, torch.Tensor) and out.ndim in (3, 4) and out.shape[-1] == out.shape[-2]


class AttentionRecorder:
    """Records, in call order, the attention of each attention-module call of a forward pass as
    (B, heads, N, N), with the tensor to differentiate for its gradient (``grad_of``). Use as a
    context manager around the forward pass; ``calls`` is emptied at each ``clear()``."""

    def __init__(self, model, method: str):
        self.modules = attention_modules(model)
        self.method = method
        self.calls: list[dict] = []
        self._handles: list = []

    def __enter__(self):
        from torch import nn

        for name, module in self.modules:
            if isinstance(module, nn.MultiheadAttention):
                self._handles.append(
                    module.register_forward_pre_hook(_ask_for_weights, with_kwargs=True)
                )
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *_exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.calls.clear()

    def _hook(self, name: str):
        from torch import nn

        def record(module, _inputs, out):
            if isinstance(module, nn.MultiheadAttention):
                weights = out[1]
                if weights is None or weights.ndim != 4:
                    return
                self.calls.append({"name": name, "attention": weights, "kind": "mha"})
            elif is_attention_matrix(out):
                attention = out if out.ndim == 4 else out[:, None]
                self.calls.append({"name": name, "attention": attention, "grad_of": out})

        return record

    def attentions(self) -> list:
        """The recorded attention matrices (B, heads, N, N), refused when there are none or
        when the layers' token counts differ."""
        if not self.calls:
            raise PathvizError(NO_ATTENTION.format(method=self.method))
        sizes = {tuple(c["attention"].shape[-2:]) for c in self.calls}
        if len(sizes) > 1:
            names = ", ".join(c["name"] for c in self.calls)
            raise PathvizError(
                f"{self.method}: the attention modules ({names}) attend over different token "
                f"counts {sorted(sizes)}; name one model whose blocks share one token sequence"
            )
        return [c["attention"] for c in self.calls]

    def gradients(self, score) -> list:
        """d score / d attention, (B, heads, N, N) per recorded call."""
        import torch

        sources = [self._grad_source(c) for c in self.calls]
        grads = torch.autograd.grad(score, sources, allow_unused=True)
        out = []
        for call, grad in zip(self.calls, grads, strict=True):
            shape = call["attention"].shape
            if grad is None:  # an attention the output does not depend on
                grad = torch.zeros(shape, dtype=call["attention"].dtype)
            out.append(grad.reshape(shape))
        return out

    def _grad_source(self, call: dict):
        if call.get("kind") != "mha":
            return call["grad_of"]
        # nn.MultiheadAttention returns a view of the softmax output its values were mixed with
        # (dropout is off in eval); the gradient is taken on that tensor, the view's base.
        weights = call["attention"]
        base = weights._base
        b, heads, n, s = weights.shape
        if base is None or base.numel() != weights.numel() or base.shape[-2:] != (n, s):
            raise PathvizError(
                f"{self.method}: the attention weights of {call['name']!r} are not the tensor "
                "its output was computed from (a fused attention kernel?); run the model in "
                "eval mode with gradients enabled"
            )
        return base


def _ask_for_weights(_module, args, kwargs):
    """Makes an nn.MultiheadAttention call return its per-head weights."""
    args = list(args)
    if len(args) > _NEED_WEIGHTS:
        args[_NEED_WEIGHTS] = True
    else:
        kwargs["need_weights"] = True
    if len(args) > _AVERAGE:
        args[_AVERAGE] = False
    else:
        kwargs["average_attn_weights"] = False
    return tuple(args), kwargs


def class_row(relevance, extra: int):
    """The patch-token relevance of what the head reads: the class token's row (the first
    token) over the patch tokens, or, for a model without extra tokens (mean-pooled patch
    tokens), the mean of all rows."""
    rows = relevance[:, :1] if extra else relevance
    return rows.mean(dim=1)[:, extra:]


def upsample_tokens(values, h: int, w: int, size):
    """(B, h * w) per-token values -> (B, H, W), each token's value over its patch pixels."""
    import torch.nn.functional as F

    grid = values.reshape(len(values), 1, h, w)
    return F.interpolate(grid, size=tuple(size), mode="nearest")[:, 0]
