"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

The weights are re-initialised cumulatively from the top layer down; after each step the maps are
recomputed for the same patches and classes and compared with the original ones by Spearman rank
correlation. A method that explains the model loses its maps as the model is destroyed (the
correlation falls towards 0); one that merely reflects the image (an edge detector) keeps them.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from ..errors import PathvizError


def parameterised_layers(model) -> list[str]:
    """Modules that own weights and can re-initialise them, top (output) first."""
    names = [
        name
        for name, module in model.named_modules()
        if name
        and hasattr(module, "reset_parameters")
        and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def model_randomisation(
    model,
    inputs,
    method: str,
    *,
    background=None,
    target="predicted",
    output: str = "none",
    init_seed: int = 0,
    **options,
) -> pd.DataFrame:
    """One row per cumulative randomisation step: the layer just randomised and the mean and
    minimum Spearman correlation (of |map| and of the signed map) with the original maps. The
    original model's result (its completeness errors among them) is ``table.attrs["original"]``."""
    import torch
    from scipy.stats import spearmanr

    from . import attribute

    original = attribute(
        model, inputs, method, background=background, target=target, output=output, **options
    )
    layers = parameterised_layers(model)
    if not layers:
        raise PathvizError("sanity check: the model has no layers with weights to randomise")
    randomised = copy.deepcopy(model).eval()
    modules = dict(randomised.named_modules())
    torch.manual_seed(init_seed)  # the re-initialised weights
    rows = []
    for step, name in enumerate(layers, start=1):
        modules[name].reset_parameters()
        maps = attribute(
            randomised,
            inputs,
            method,
            background=background,
            target=original.targets,
            output=output,
            **options,
        ).maps
        absolute, signed = [], []
        for a, b in zip(original.maps, maps, strict=True):
            absolute.append(spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0])
            signed.append(spearmanr(a.ravel(), b.ravel())[0])
        absolute, signed = np.nan_to_num(absolute), np.nan_to_num(signed)
        rows.append(
            {
                "step": step,
                "randomised_up_to": name,
                "spearman_abs_mean": float(np.mean(absolute)),
                "spearman_abs_min": float(np.min(absolute)),
                "spearman_mean": float(np.mean(signed)),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["original"] = original
    return table
