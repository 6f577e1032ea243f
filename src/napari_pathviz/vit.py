"""A small vision-transformer patch classifier built from ``torch.nn`` only, for model cards.

A card names it as ``"factory": "napari_pathviz.vit:PatchViT"`` with its size in
``factory_kwargs``; the weights are a state dict or safetensors. It has the parts of the ViTs
pathology encoders use (a patch-embedding convolution, a class token, optional register tokens,
learned position embeddings, pre-norm blocks of LayerNorm, self-attention and a GELU MLP, a
final LayerNorm, a linear head on the class token), so every attribution method, rollout and
chefer included, can be tried on it. ``attention="torch"`` uses ``nn.MultiheadAttention``;
``attention="softmax"`` a hand-written attention whose ``nn.Softmax`` module is where the
attention methods read the attention matrices.

This module imports torch when imported; only model loading imports it.
"""

from __future__ import annotations

import torch
from torch import nn

# the demo model's per-channel normalisation of [0, 1] RGB (napari_pathviz._demo_model)
DEMO_MEAN = (0.80, 0.72, 0.70)
DEMO_STD = (0.15, 0.18, 0.18)


class SoftmaxAttention(nn.Module):
    """Multi-head self-attention written out: ``softmax(q k^T / sqrt(d)) v`` with the softmax
    an ``nn.Softmax`` module (the hook point of rollout and chefer)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = self.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if attention == "torch":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        elif attention == "softmax":
            self.attn = SoftmaxAttention(dim, heads)
        else:
            raise ValueError(f"attention must be 'torch' or 'softmax', got {attention!r}")
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if isinstance(self.attn, nn.MultiheadAttention):
            h = self.attn(h, h, h, need_weights=False)[0]
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchViT(nn.Module):
    """ViT patch classifier: (B, 3, S, S) -> (B, n_classes) logits from the class token;
    :meth:`tokens` gives the normalised tokens (B, 1 + registers + (S / patch)^2, dim)."""

    def __init__(
        self,
        n_classes: int = 3,
        image_size: int = 64,
        patch_size: int = 8,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        attention: str = "torch",
        register_tokens: int = 0,
    ):
        super().__init__()
        self.config = {  # the constructor's arguments, for a model card
            "n_classes": n_classes,
            "image_size": image_size,
            "patch_size": patch_size,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "attention": attention,
            "register_tokens": register_tokens,
        }
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.registers = nn.Parameter(torch.zeros(1, register_tokens, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n_patches, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(dim, heads, mlp_ratio, attention) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # traceable by torch.fx
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        registers = self.registers.expand(x.shape[0], -1, -1)  # after the class token, no position
        x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x)[:, 0])


def build_vit(**kwargs) -> PatchViT:
    """A :class:`PatchViT` (keyword arguments as its constructor's)."""
    return PatchViT(**kwargs)


def train_demo_vit(
    epochs: int = 4, seed: int = 0, demo_dir=None, input_size: int = 32, **kwargs
) -> tuple[PatchViT, float]:
    """A PatchViT (``kwargs`` as its constructor's) trained on the demo slide's 64 px patches,
    resized to ``input_size`` and normalised as the demo model's (:data:`DEMO_CARD`), and its
    accuracy on a held-out quarter of them. Seconds on a CPU; used by the tests and the
    README's rollout figure."""
    import numpy as np

    from ._demo import load_demo
    from ._demo_model import demo_labels, read_patches
    from .models import ModelSpec

    slide, table = load_demo(demo_dir, with_predictions=False)
    spec = ModelSpec(None, "", input_size=input_size, mean=DEMO_MEAN, std=DEMO_STD)
    x = spec.preprocess(read_patches(slide, table))
    y = torch.as_tensor(demo_labels(table))
    order = np.random.default_rng(seed).permutation(len(y))
    held_out, train = order[: len(y) // 4], order[len(y) // 4 :]
    torch.manual_seed(seed)
    model = PatchViT(image_size=input_size, **kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small: one thread measured 30x faster than two
    try:
        _fit(model, x[train], y[train], epochs, seed)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        accuracy = (model(x[held_out]).argmax(1) == y[held_out]).float().mean().item()
    return model, accuracy


def _fit(model: PatchViT, x, y, epochs: int, seed: int) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batches = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(y), generator=batches).split(32):
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()


def demo_vit_card(model: PatchViT, input_size: int = 32) -> dict:
    """A model card for a :func:`train_demo_vit` model (its weights saved as a state dict or
    safetensors beside it)."""
    from ._demo import ANNOTATIONS

    return {
        "name": "tiny ViT trained on the napari-pathviz demo patches",
        "factory": "napari_pathviz.vit:PatchViT",
        "factory_kwargs": dict(model.config),
        "input_size": input_size,
        "mpp": 0.5,
        "mean": list(DEMO_MEAN),
        "std": list(DEMO_STD),
        "class_names": list(ANNOTATIONS),
        "activation": "softmax",
        "explained_output": "logit",
    }
