"""The demo's patch classifier: a small ResNet-style network built from ``torch.nn`` only.

It is shaped like the models users bring (in-place ReLU modules used twice per block, residual
adds, batch norm, adaptive pooling), which is what breaks naive DeepLIFT implementations, so the
demo exercises the same code paths as a real model. Weights trained on the demo patches ship
with the package (``data/demo_model.pt``, a state dict loaded with ``weights_only=True``);
``python -m napari_pathviz._demo_model`` retrains them (on 80% of the patches, reporting the
accuracy on the other 20%) in about a minute on a CPU.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ._demo import ANNOTATIONS, DEMO_PATCH_SIZE

# Per-channel normalisation of the demo's RGB input in [0, 1].
MEAN = (0.80, 0.72, 0.70)
STD = (0.15, 0.18, 0.18)
WEIGHTS = "demo_model.pt"
TRAIN_EPOCHS = 40  # the shipped weights; the demo has ~200 training patches


def build_demo_model(n_classes: int = len(ANNOTATIONS)):
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)  # one module, applied twice, as torchvision does
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

    class DemoPatchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = BasicBlock(16, 16, 1)
            self.layer2 = BasicBlock(16, 32, 2)
            self.layer3 = BasicBlock(32, 64, 2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return DemoPatchNet()


def load_demo_model():
    """The demo network with its shipped weights, in eval mode."""
    import torch

    model = build_demo_model()
    with resources.as_file(resources.files("napari_pathviz") / "data" / WEIGHTS) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def to_model_input(patches: np.ndarray):
    """(N, H, W, 3) patches -> normalised (N, 3, H, W) float tensor (scaled by dtype as every
    model input is, through models.pixels_to_unit)."""
    import torch

    from .models import pixels_to_unit

    x = pixels_to_unit(patches)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def demo_labels(table) -> np.ndarray:
    """Class index of each patch's annotation, in the order of ANNOTATIONS."""
    index = {a: i for i, a in enumerate(ANNOTATIONS)}
    return np.array([index[a] for a in table.df["annotation"]], dtype=np.int64)


def read_patches(slide, table) -> np.ndarray:
    """(N, P, P, 3) uint8 level-0 patches of the table, as inference reads them."""
    from .inference import read_patch_batch

    return read_patch_batch(slide, table.df)


def run_demo_model(slide, table, model=None, batch_size: int = 128):
    """Class probabilities (N x classes) and penultimate-layer embeddings (N x 64, the input of
    the last Linear, taken with a forward hook) of the demo model for each patch."""
    import torch

    model = model or load_demo_model()
    patches = read_patches(slide, table)
    probs, feats = [], []
    hook = model.fc.register_forward_hook(lambda _m, inputs, _out: feats.append(inputs[0]))
    try:
        with torch.inference_mode():
            for start in range(0, len(patches), batch_size):
                logits = model(to_model_input(patches[start : start + batch_size]))
                probs.append(torch.softmax(logits, dim=1).numpy())
    finally:
        hook.remove()
    if not probs:
        return np.zeros((0, len(ANNOTATIONS)), np.float32), np.zeros((0, 64), np.float32)
    return np.concatenate(probs), torch.cat(feats).numpy()


def predict_demo(slide, table, model=None, batch_size: int = 128) -> np.ndarray:
    """Class probabilities (N x classes) of the demo model for each patch of the table."""
    return run_demo_model(slide, table, model, batch_size)[0]


def held_out_split(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices: a random ``fraction`` of the patches held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = round(n * fraction)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def train_demo_model(slide, table, epochs: int = 20, seed: int = 0, rows=None):
    """Trains the demo network on the demo patches (all, or the given ``rows``), with flips and
    90-degree turns as augmentation; deterministic for a given seed."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = to_model_input(read_patches(slide, table))
    y_all = torch.as_tensor(demo_labels(table))
    if rows is not None:
        x_all, y_all = x_all[rows], y_all[rows]
    model = build_demo_model()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * -(-len(x_all) // 64)
    )
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x_all))
        for start in range(0, len(order), 64):
            idx = torch.as_tensor(order[start : start + 64])
            xb = torch.rot90(x_all[idx], int(rng.integers(4)), dims=(2, 3))
            if rng.random() < 0.5:
                xb = torch.flip(xb, dims=(3,))
            loss = torch.nn.functional.cross_entropy(model(xb), y_all[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def main() -> None:
    import torch

    from ._demo import ensure_demo_data
    from .patches import load_patches
    from .slide import open_slide

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one summation order: the same weights on every machine
    paths = ensure_demo_data()
    slide = open_slide(paths["slide"])
    table = load_patches(paths["patches"], patch_size=DEMO_PATCH_SIZE)
    train, held_out = held_out_split(len(table.df))
    model = train_demo_model(slide, table, epochs=TRAIN_EPOCHS, rows=train)
    correct = predict_demo(slide, table, model).argmax(1) == demo_labels(table)
    out = Path(__file__).parent / "data" / WEIGHTS
    out.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), out)
    print(
        f"wrote {out}: training accuracy {correct[train].mean():.3f} ({len(train)} patches), "
        f"held-out accuracy {correct[held_out].mean():.3f} ({len(held_out)} patches), "
        f"all {correct.mean():.3f}"
    )


if __name__ == "__main__":
    main()
