"""The architectures users run, built from torch.nn only (no torchvision), for the tests that
compare our attributions with their reference libraries.

Each builder returns a seeded model in eval mode with BatchNorm statistics that are not the
identity, so that a rule that ignores BatchNorm or mishandles a layer shows up in the numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_pathviz.vit import SoftmaxAttention


def _settle(model: nn.Module, seed: int, channels: int = 3, size: int = 32) -> nn.Module:
    """Give BatchNorm layers realistic running statistics (a few training-mode passes on
    random data), then switch to eval."""
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, channels, size, size, generator=gen))
    return model.eval()


def plain_maxpool_cnn(n_classes: int = 3, seed: int = 0) -> nn.Module:
    """Conv -> ReLU -> MaxPool (a ReLU next to a MaxPool2d, the pattern captum gets wrong),
    twice, then Flatten -> Dropout -> Linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8 * 8 * 8, n_classes),
    )
    return model.eval()


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one in-place ReLU module used twice, the residual added in
    place."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    """A small ResNet: the max-pool stem (3x3, stride 2, overlapping windows), BasicBlocks with
    the reused in-place ReLU, AdaptiveAvgPool2d, Flatten, Linear."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, 1, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_style(n_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _settle(ResNetStyle(n_classes), seed)


def avgpool_cnn(n_classes: int = 3, seed: int = 0) -> nn.Module:
    """AvgPool2d, BatchNorm, in-place ReLU, functional-style Flatten, Dropout in eval."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8 * 4 * 4, n_classes),
    )
    return _settle(model, seed)


# name -> builder; the demo model is added by the tests that load it from the package.
ARCHITECTURES = {
    "plain_maxpool": plain_maxpool_cnn,
    "resnet_maxpool_stem": resnet_style,
    "avgpool_batchnorm": avgpool_cnn,
}


def inputs(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Smooth-ish random images (not pure noise: neighbouring pixels correlate, as in tissue)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (fine + 0.1 * torch.randn(n, 3, size, size, generator=gen)).float()


class MixedActivations(nn.Module):
    """Every kind of op DeepLIFT has a rule for, in one network: GELU, Tanh, Sigmoid, SiLU and
    LeakyReLU (modules and functions), an overlapping max pool as a module and a
    non-overlapping one as a function, AvgPool2d, a concatenation, a residual add, a product
    with a constant, BatchNorm, Dropout in eval, Flatten."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.left = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Tanh())
        self.right = nn.Sequential(nn.Conv2d(8, 4, 1), nn.Sigmoid())
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 4 * 4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        branches = torch.cat([self.left(x), self.right(x)], dim=1)
        x = x + 0.5 * nn.functional.silu(self.mix(branches))
        x = nn.functional.max_pool2d(nn.functional.leaky_relu(x, 0.1), 2)
        return self.head(self.avg(x))


def mixed_activations(n_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _settle(MixedActivations(n_classes), seed)


class TinyViTBlock(nn.Module):
    """A transformer block (LayerNorm, self-attention: a product of two activations and a
    softmax inside the network): ops DeepLIFT has no rule for."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + attention @ v
        return x + self.mlp(x)


class TinyViT(nn.Module):
    def __init__(self, n_classes: int = 3, dim: int = 16, layer_norm: bool = True):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(TinyViTBlock(dim))
        if not layer_norm:
            self.blocks[0].norm1 = nn.Identity()
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc(self.blocks(tokens).mean(1))


def tiny_vit(n_classes: int = 3, seed: int = 0, layer_norm: bool = True) -> nn.Module:
    """A transformer on 8x8-pixel tokens; ``layer_norm`` False leaves the attention as the
    first op without a DeepLIFT rule."""
    torch.manual_seed(seed)
    return TinyViT(n_classes, layer_norm=layer_norm).eval()


# --- vision transformers with a class token, for Grad-CAM on tokens, rollout and chefer ------


# Multi-head attention written out, the softmax an nn.Softmax module (the convention the attention
# methods hook): the package's own, which its trained demo ViT uses.
HandAttention = SoftmaxAttention


class ViTBlock(nn.Module):
    """Pre-norm block; ``torch_attention`` uses nn.MultiheadAttention, called the way many
    models do (weights asked for positionally, then ignored)."""

    def __init__(self, dim: int, heads: int, torch_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if torch_attention:
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.attn = HandAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if isinstance(self.attn, nn.MultiheadAttention):
            h = self.attn(h, h, h, None, False)[0]  # need_weights=False, positionally
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class ClassTokenViT(nn.Module):
    """8x8-pixel patches embedded by a conv, a class token and ``registers`` register tokens in
    front of them, position embeddings, ``depth`` blocks, a final LayerNorm. Returns the tokens
    (B, N, D) when ``head`` is False, else the logits of a Linear on the class token."""

    def __init__(
        self,
        n_classes=3,
        dim=16,
        depth=2,
        heads=2,
        registers=0,
        torch_attention=False,
        head=True,
        size=32,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1 + registers, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + registers + (size // 8) ** 2, dim) * 0.5)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, torch_attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1) + self.pos_embed
        tokens = self.norm(self.blocks(x))
        return tokens if self.head is None else self.head(tokens[:, 0])


class ClassTokenHead(nn.Module):
    """A linear head on the class token of an encoder that returns tokens (B, N, D)."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens[:, 0])


def hand_attention_vit(n_classes: int = 3, seed: int = 0) -> nn.Module:
    """Class token + one register token, two blocks of hand-written attention (nn.Softmax)."""
    torch.manual_seed(seed)
    return ClassTokenViT(n_classes, registers=1).eval()


def token_encoder_vit(n_classes: int = 3, seed: int = 0) -> nn.Module:
    """An encoder returning tokens (nn.MultiheadAttention blocks, a class token) followed by a
    head on the class token: ``model[0]`` is the encoder, ``model[1]`` the head."""
    torch.manual_seed(seed)
    encoder = ClassTokenViT(n_classes, torch_attention=True, head=False)
    return nn.Sequential(encoder, ClassTokenHead(16, n_classes)).eval()


VISION_TRANSFORMERS = {
    "hand_attention": hand_attention_vit,
    "token_encoder_mha": token_encoder_vit,
}
