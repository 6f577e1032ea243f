"""A two-stage (encoder + gated attention MIL head) model trained on the demo slide in seconds,
for the tests and the README figure.

Bags are random subsets of the demo's patches; a bag is positive when any of its patches is
mostly DAB-positive tissue (the MIL assumption: one positive instance makes a positive bag).
Half the bags are drawn from the other patches only, half get one to three positive patches,
so that the classes are balanced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DEMO_MIL_CLASSES = ("no_dab_positive", "dab_positive")
DEMO_MIL_INPUT = 32  # px the encoder sees (the 64-px demo patches are resized): fast on a CPU
DEMO_MIL_MEAN = (0.8, 0.72, 0.7)
DEMO_MIL_STD = (0.15, 0.18, 0.18)


def demo_bags(positive: np.ndarray, n_bags: int, bag_size: int, rng: np.random.Generator):
    """(bags (n_bags, bag_size) patch indices, labels (n_bags,) 0/1) from the patches'
    positive flags."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    bags = np.stack([rng.choice(neg, bag_size, replace=False) for _ in range(n_bags)])
    labels = (np.arange(n_bags) % 2).astype(np.int64)
    for b in np.flatnonzero(labels):
        k = rng.integers(1, 4)
        bags[b, rng.choice(bag_size, k, replace=False)] = rng.choice(pos, k, replace=False)
    return bags, labels


def train_demo_mil(patches: np.ndarray, positive: np.ndarray, *, steps: int = 150, seed: int = 0):
    """(encoder, head) trained on bags of the (N, H, W, 3) uint8 ``patches``; ``positive``
    flags the DAB-positive ones. About 2 s on a CPU."""
    import torch
    import torch.nn.functional as F

    from .mil import GatedAttentionMIL, SmallConvEncoder

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder, head = SmallConvEncoder(dim=16, width=8), GatedAttentionMIL(16, 16, 2)
    x = demo_preprocess(patches)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small: one thread measured 20x faster than two
    try:
        for _ in range(steps):
            bags, labels = demo_bags(positive, 16, 8, rng)
            feats = encoder(x[torch.as_tensor(bags.ravel())]).view(16, 8, -1)
            loss = F.cross_entropy(head(feats), torch.as_tensor(labels))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return encoder.eval(), head.eval()


def demo_preprocess(patches: np.ndarray):
    """The card's preprocessing (resize to DEMO_MIL_INPUT, mean/std), as the loaded model does."""
    from .models import ModelSpec

    spec = ModelSpec(None, "demo", DEMO_MIL_INPUT, mean=DEMO_MIL_MEAN, std=DEMO_MIL_STD)
    return spec.preprocess(patches)


def save_demo_mil(encoder, head, folder: str | os.PathLike) -> Path:
    """Writes encoder.safetensors, head.safetensors and their two-stage card; returns the card."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(encoder.state_dict(), str(folder / "encoder.safetensors"))
    save_file(head.state_dict(), str(folder / "head.safetensors"))
    card = {
        "name": "demo gated-attention MIL",
        "feature_dim": 16,
        "encoder": {
            "factory": "napari_pathviz.mil:SmallConvEncoder",
            "factory_kwargs": {"dim": 16, "width": 8},
            "weights": "encoder.safetensors",
            "input_size": DEMO_MIL_INPUT,
            "mean": list(DEMO_MIL_MEAN),
            "std": list(DEMO_MIL_STD),
        },
        "head": {
            "factory": "napari_pathviz.mil:GatedAttentionMIL",
            "factory_kwargs": {"in_dim": 16, "hidden": 16, "n_classes": 2},
            "weights": "head.safetensors",
            "class_names": list(DEMO_MIL_CLASSES),
        },
    }
    path = folder / "mil_model.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
