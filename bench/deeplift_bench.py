"""DeepLIFT / DeepSHAP: our multiplier engine against captum's DeepLiftShap, in one run.

    .venv/bin/python bench/deeplift_bench.py [--repeats 3]

On the trained demo model and its real patches (12 explained, 16 references; no max pool, where
captum's rules are right) both are timed on the same functional copy; the ratio and each side's
worst completeness error are printed. On the demo-sized ResNet-style net of tests/zoo.py (max-pool
stem) only the completeness is compared: captum's max-pool rule is the one issue 9 reports wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def demo_inputs():
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_model import load_demo_model, read_patches, to_model_input

    slide, table = load_demo(with_predictions=False)
    x = to_model_input(read_patches(slide, table))
    rng = np.random.default_rng(0)
    explained = rng.choice(len(x), 12, replace=False)
    background = rng.choice(np.setdiff1d(np.arange(len(x)), explained), 16, replace=False)
    return load_demo_model(), x[explained], x[background]


def captum_deeplift(model, x, background, targets):
    """captum's DeepLiftShap on our torch.fx copy (it refuses the in-place original)."""
    import torch
    from captum.attr import DeepLiftShap

    from napari_pathviz.attribution.deeplift import functional_copy

    explainer = DeepLiftShap(functional_copy(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = explainer.attribute(x, baselines=background, target=torch.as_tensor(targets))
    return maps.detach().numpy()


def completeness(model, x, background, targets, maps) -> float:
    import torch

    with torch.no_grad():
        fx = model(x).gather(1, torch.as_tensor(targets).view(-1, 1)).squeeze(1)
        fb = model(background)[:, torch.as_tensor(targets)].mean(0)
    delta = (fx - fb).numpy()
    total = maps.reshape(len(maps), -1).sum(1)
    return float(np.max(np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)))


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    import torch

    from napari_pathviz.attribution import attribute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, x, background = demo_inputs()
    ours_t, ours = best_of(lambda: attribute(model, x, "deep", background=background), args.repeats)
    theirs_t, theirs = best_of(
        lambda: captum_deeplift(model, x, background, ours.targets), args.repeats
    )
    ours_err = completeness(model, x, background, ours.targets, ours.per_channel)
    theirs_err = completeness(model, x, background, ours.targets, theirs)
    corr = np.corrcoef(ours.per_channel.ravel(), theirs.ravel())[0, 1]
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        f"demo model, 12 patches x 16 references: ours {ours_t:.2f} s (worst completeness "
        f"{ours_err:.1e}), captum DeepLiftShap {theirs_t:.2f} s ({theirs_err:.1e}); "
        f"captum / ours = {theirs_t / ours_t:.2f}x; correlation {corr:.6f}"
    )
    import zoo

    net, xs = zoo.resnet_style(), zoo.inputs(12, seed=1)
    refs = zoo.inputs(16, seed=2) * 0.5
    ours = attribute(net, xs, "deep", background=refs)
    theirs = captum_deeplift(net, xs, refs, ours.targets)
    print(
        "ResNet-style, max-pool stem, 12 x 16: worst completeness ours "
        f"{completeness(net, xs, refs, ours.targets, ours.per_channel):.1e}, captum "
        f"{completeness(net, xs, refs, ours.targets, theirs):.1e}"
    )


if __name__ == "__main__":
    main()
