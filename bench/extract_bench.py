"""Extraction throughput vs the rate at which the same patches can merely be read.

Target (inference issue): ``pathviz extract`` runs at >= 80% of the rate at which the same
patches can be read from the slide, with a small CNN on the CPU and a ResNet-18-like model on a
lent H200 (GPU utilisation reported there).

Measured in one run, on a JPEG-tiled pyramidal TIFF written here (8192 x 8192, 224-px patches):
- read: the patches read in batches by the same prefetching thread pool, no model;
- model: the model alone on batches already in memory (its compute ceiling);
- extract: ``inference.extract`` (read ahead in threads + model + results store).
The ratio extract/read is the target; extract/min(read, model) shows how well reading and
computing overlap (1.0 = perfect overlap).

    .venv/bin/python bench/extract_bench.py [--patches 1024] [--batch-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

PATCH = 224
SIDE = 8192


def small_cnn():
    """A small CNN for CPU runs: 4 strided conv blocks, 8-32 channels (~25 MFLOP a 224-px
    patch), as a light tissue classifier would be."""
    from torch import nn

    def block(c_in, c_out):
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    return nn.Sequential(
        block(3, 16),
        block(16, 32),
        block(32, 64),
        block(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    )


def resnet18_like():
    """ResNet-18's layout from torch.nn (no torchvision): for the GPU run."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return self.relu(out)

    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    c = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(c, c_out, stride), Block(c_out, c_out, 1)]
        c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 2)]
    return nn.Sequential(*layers)


def write_slide(path: Path) -> None:
    import tifffile
    from skimage import data

    rng = np.random.default_rng(0)
    tile = data.immunohistochemistry()
    image = np.empty((SIDE, SIDE, 3), np.uint8)
    for y in range(0, SIDE, 512):
        for x in range(0, SIDE, 512):
            image[y : y + 512, x : x + 512] = np.rot90(tile, int(rng.integers(4)))
    jpeg = {"compression": "jpeg", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, tile=(256, 256), subifds=2, **jpeg)
        tw.write(image[::2, ::2], tile=(256, 256), subfiletype=1, **jpeg)
        tw.write(image[::4, ::4], tile=(256, 256), subfiletype=1, **jpeg)


def read_only(slide, df, batch_size, workers) -> float:
    """Patches/s reading in batches with the same prefetching pool as extract, no model."""
    from napari_pathviz.inference import read_patch_batch

    starts = range(0, len(df), batch_size)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in pool.map(
            lambda s: read_patch_batch(slide, df.iloc[s : s + batch_size]), starts
        ):
            batch.sum()  # touch the pixels
    return len(df) / (time.perf_counter() - t0)


def model_only(spec, patches, batch_size, device) -> float:
    """Patches/s of the model alone on patches in memory, set up as ``extract`` runs it (on CUDA:
    channels_last weights and inputs; ``extract`` converts the model in place anyway)."""
    import torch

    cuda = device.startswith("cuda")
    model = spec.model.to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(patches), batch_size):
            x = spec.preprocess(patches[s : s + batch_size], device)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
        if cuda:
            torch.cuda.synchronize()
    return len(patches) / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from napari_pathviz.inference import extract, read_patch_batch, resolve_device
    from napari_pathviz.models import ModelSpec
    from napari_pathviz.patches import PatchTable
    from napari_pathviz.slide import open_slide

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device("auto")
    torch.manual_seed(0)
    net = resnet18_like() if device.startswith("cuda") else small_cnn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.tif"
        write_slide(path)
        slide = open_slide(path)
        rng = np.random.default_rng(1)
        n_grid = SIDE // PATCH
        cells = rng.choice(n_grid * n_grid, size=min(args.patches, n_grid * n_grid), replace=False)
        df = pd.DataFrame(
            {
                "ID": "bench",
                "x": cells % n_grid * PATCH,
                "y": cells // n_grid * PATCH,
                "patch_size": PATCH,
            }
        )
        table = PatchTable.from_frame(df)
        spec = ModelSpec(net.eval(), str(path), mean=(0.8, 0.7, 0.7), std=(0.15, 0.2, 0.2))
        in_memory = read_patch_batch(slide, df)  # the same patches, for the model-only rate
        model_only(spec, in_memory[:64], args.batch_size, device)  # warm-up
        read_only(slide, df.iloc[:128], args.batch_size, args.workers)  # warm-up
        rates = {"read": [], "model": [], "extract": []}
        for _ in range(3):
            rates["read"].append(read_only(slide, df, args.batch_size, args.workers))
            rates["model"].append(model_only(spec, in_memory, args.batch_size, device))
            t0 = time.perf_counter()
            extract(
                slide, table, spec, batch_size=args.batch_size, device=device, workers=args.workers
            )
            rates["extract"].append(len(df) / (time.perf_counter() - t0))
        best = {k: max(v) for k, v in rates.items()}
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device "
        f"{device}; {len(df)} patches of {PATCH} px from a JPEG-tiled TIFF; batch "
        f"{args.batch_size}, {args.workers} read workers; best of 3"
    )
    for name, rate in best.items():
        print(f"  {name:8s} {rate:8.1f} patches/s")
    ratio = best["extract"] / best["read"]
    overlap = best["extract"] / min(best["read"], best["model"])
    print(
        f"extract / read = {ratio:.2f} (target >= 0.80) -> {'PASS' if ratio >= 0.8 else 'FAIL'}"
        f"; overlap extract / min(read, model) = {overlap:.2f}"
    )
    shared = 1 / (1 / best["read"] + 1 / best["model"])
    print(
        f"  if reading and the model share the same cores (CPU): bound 1/(1/read + 1/model) = "
        f"{shared:.1f} patches/s; extract reaches {best['extract'] / shared:.2f} of it"
    )
    if best["model"] < best["read"]:
        print(
            "  the model is slower than reading here: compute-bound, so extract can reach at "
            "most model/read = "
            f"{best['model'] / best['read']:.2f} of the read rate"
        )
    if device.startswith("cuda"):
        print("  GPU utilisation: see nvidia-smi dmon during the run (bench/gpu.sh records it)")


if __name__ == "__main__":
    main()
