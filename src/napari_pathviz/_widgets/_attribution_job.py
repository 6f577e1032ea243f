"""The work of one Explain of the Attributions widget, done in a worker thread (see
:mod:`._jobs`): no Qt here, only the core."""

from __future__ import annotations

import numpy as np

from ..attribution.references import check_same_size, reference_images


class AttributionJob:
    """One Explain, in a worker thread: load the model, read patches and references, attribute
    chunk by chunk into a store of the results cache (so a rerun after Cancel resumes)."""

    def __init__(
        self,
        model_args,
        slide,
        features,
        rows,
        method,
        target,
        output,
        background,
        device,
        options,
        load=None,
    ):
        self.load = load  # the viewer's model in use (loaded once), else load_model
        self.model_args, self.slide, self.features, self.rows = model_args, slide, features, rows
        self.method, self.target, self.output = method, target, output
        self.background, self.device, self.options = background, device, options

    def run(self, progress, cancelled):
        from ..attribution.stored import explain
        from ..classes import resolve_target
        from ..inference import read_patch_batch, resolve_device
        from ..models import load_model

        spec = self.load(self.model_args) if self.load else load_model(**self.model_args)
        device = resolve_device(self.device)
        note = "no CUDA GPU: ran on the CPU" if self.device == "auto" and device == "cpu" else ""
        # Maps of unnormalised inputs explain nonsense: said, never silent.
        warning = (spec.normalisation_warning(), note)
        model = spec.model.to(device).eval()
        images = read_patch_batch(self.slide, self.features.iloc[self.rows])
        inputs = spec.preprocess(images, device)
        background = None
        if self.background is not None:
            references = self._references()
            check_same_size(references, images)
            background = spec.preprocess(references, device)
        result = explain(
            model,
            inputs,
            self.method,
            background=background,
            target=resolve_target(self.target, spec.class_names, "Target"),
            output=self.output,
            store="auto",
            keep_per_channel=False,  # the layers and gallery show channel sums; keep the cache small
            keys=self.features.iloc[self.rows],
            progress=progress,
            cancelled=cancelled,
            **self.options,
        )
        # The layers, labels and gallery name the classes as the model card does.
        result.metadata["class_names"] = list(spec.class_names) if spec.class_names else None
        return result, self.rows, images, warning

    def _references(self) -> np.ndarray:
        from ..inference import read_patch_batch

        kind, value = self.background
        if kind == "rows":
            return read_patch_batch(self.slide, self.features.iloc[value])
        return reference_images(value, self.slide)
