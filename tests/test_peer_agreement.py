"""Expected gradients, Grad-CAM and Grad-CAM++ against their reference libraries, on the zoo's
architectures (max-pool CNN, ResNet-style with a max-pool stem and a reused in-place ReLU,
avg-pool/BatchNorm CNN) and the demo model:

- expected gradients vs shap.GradientExplainer (with and without local smoothing) and captum's
  GradientShap: correlation of the maps, and completeness (ours, shap's);
- Grad-CAM / Grad-CAM++ vs pytorch-grad-cam's internals (its activations, gradients and channel
  weights, before its ReLU and per-map min-max scaling), and on layers whose output is changed in
  place later, vs the formulas on an out-of-place copy (where pytorch-grad-cam is wrong).

The sizes keep the file near a minute on 2 CPU cores with a margin on every bound asserted
(shap samples at random, so its maps carry the most noise).
"""

from __future__ import annotations

import functools
import importlib
import sys
import types

import numpy as np
import pytest
import torch
from scipy import ndimage

import zoo
from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.gradcam import find_cam_layer


def _demo_model():
    from napari_pathviz._demo_model import load_demo_model

    return load_demo_model()


ARCHITECTURES = {**zoo.ARCHITECTURES, "demo": _demo_model}
N_SAMPLES = 1000  # per patch, ours and shap's
N_PATCHES, N_BACKGROUND = 1, 8  # one patch: the file runs in about a minute on 2 CPU cores
SMOOTHING = 0.2  # local_smoothing given to shap and to us: noise std in model-input units


@functools.cache
def _case(name: str):
    """(model, explained patches, background patches); inputs are 32 x 32 (the demo model,
    trained on 64 x 64 patches, pools adaptively and runs 4x faster at 32)."""
    torch.manual_seed(0)
    explained = zoo.inputs(2, seed=1)[:N_PATCHES]
    return ARCHITECTURES[name](), explained, zoo.inputs(N_BACKGROUND, seed=2)


@functools.cache
def _ours(name: str, smoothing: float):
    model, x, background = _case(name)
    return attribute(
        model,
        x,
        "gradient",
        background=background,
        n_samples=N_SAMPLES,
        local_smoothing=smoothing,
        batch_size=250,
    )


@functools.cache
def _shap(name: str, smoothing: float):
    import shap

    model, x, background = _case(name)
    torch.manual_seed(0)  # shap draws its local-smoothing noise from torch's global generator
    explainer = shap.GradientExplainer(model, background, batch_size=250, local_smoothing=smoothing)
    values, ranks = explainer.shap_values(x, nsamples=N_SAMPLES, ranked_outputs=1, rseed=0)
    return np.asarray(values)[..., 0], np.asarray(ranks).ravel()


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(a, b, strict=True)])


def _blurred(maps: np.ndarray) -> np.ndarray:
    """Channel-summed maps under a 1-pixel Gaussian: what a heatmap shows, with less of the
    per-pixel sampling noise that the noisy inputs of local smoothing add."""
    return np.stack([ndimage.gaussian_filter(m, 1.0) for m in maps])


def _smoothed_delta(name: str, smoothing: float, targets: np.ndarray) -> np.ndarray:
    """What the attributions sum to in expectation: E f(x + noise) - E f(b), the first term
    by Monte Carlo over 2,000 noisy copies of each patch."""
    model, x, background = _case(name)
    gen = torch.Generator().manual_seed(7)
    rows = np.arange(len(x))
    with torch.no_grad():
        f_x = torch.zeros(len(x), dtype=torch.float64)
        for _ in range(4):
            noisy = x.repeat(500, 1, 1, 1) + smoothing * torch.randn(
                500 * len(x), *x.shape[1:], generator=gen
            )
            f_x += model(noisy).view(500, len(x), -1).double().mean(0)[rows, targets] / 4
        f_b = model(background).double().mean(0)[targets]
    return (f_x - f_b).numpy()


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("smoothing", [0.0, SMOOTHING])
def test_expected_gradients_agree_with_shap(name, smoothing):
    ours = _ours(name, smoothing)
    reference, shap_targets = _shap(name, smoothing)
    np.testing.assert_array_equal(ours.targets, shap_targets)  # both explain the top class
    if smoothing == 0:
        # Every channel and pixel as computed.
        correlations = _correlations(ours.per_channel, reference)
    else:
        # The noisy inputs add per-pixel variance to both estimates: compare heatmaps.
        correlations = _correlations(_blurred(ours.maps), _blurred(reference.sum(axis=1)))
    assert correlations.min() >= 0.99, correlations


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_expected_gradients_completeness_vs_shap(name):
    """Both sum to f(x) - E f(b) in expectation; ours (stratified) lands within 5% and closer
    than shap's random samples at the same count."""
    ours = _ours(name, 0.0)
    reference, _ = _shap(name, 0.0)
    shap_error = np.abs(reference.reshape(N_PATCHES, -1).sum(1) / ours.output_delta - 1)
    assert ours.completeness_error.max() <= 0.05, ours.completeness_error
    assert ours.completeness_error.mean() <= shap_error.mean(), (
        ours.completeness_error,
        shap_error,
    )


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_smoothed_expected_gradients_sum_to_the_smoothed_output(name):
    """With local smoothing the estimator (shap's) sums to E f(x + noise) - E f(b), which on
    these models differs from f(x) - E f(b) by up to 2.5x of it, flipping its sign. Ours lands
    within a quarter of |f(x) - E f(b)| of it (the noise adds variance to the sum), and the
    output difference it reports, f(x + noise) averaged over its own draws, is that target
    too: its completeness error then measures the estimator, not the smoothing."""
    smoothed = _ours(name, SMOOTHING)
    clean_delta = np.abs(_ours(name, 0.0).output_delta)
    expected = _smoothed_delta(name, SMOOTHING, smoothed.targets)
    total = smoothed.per_channel.reshape(N_PATCHES, -1).sum(1)
    assert (np.abs(total - expected) <= 0.25 * clean_delta).all(), (total, expected, clean_delta)
    assert (np.abs(smoothed.output_delta - expected) <= 0.25 * clean_delta).all()
    assert (np.abs(total - smoothed.output_delta) <= 0.25 * clean_delta).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_expected_gradients_agree_with_captum_gradient_shap(name):
    """captum's GradientShap is the same estimator (a random baseline and a uniform alpha per
    sample, noise on the input if stdevs > 0), drawn at random: equal in expectation."""
    from captum.attr import GradientShap

    model, x, background = _case(name)
    ours = _ours(name, 0.0)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (captum draws baselines and alphas from numpy's global state)
    reference = np.concatenate(
        [
            GradientShap(model)
            .attribute(
                x[i : i + 1],
                baselines=background,
                n_samples=N_SAMPLES,
                stdevs=0.0,
                target=int(ours.targets[i]),
            )
            .detach()
            .numpy()
            for i in range(N_PATCHES)
        ]
    )
    correlations = _correlations(ours.per_channel, reference)
    assert correlations.min() >= 0.99, correlations
    # Both sum to f(x) - E f(b) in expectation; captum's random samples land further off.
    captum_error = np.abs(reference.reshape(N_PATCHES, -1).sum(1) / ours.output_delta - 1)
    assert ours.completeness_error.mean() <= captum_error.mean(), captum_error


# --- Grad-CAM and Grad-CAM++ against pytorch-grad-cam -------------------------------------------


@functools.cache
def _pytorch_grad_cam():
    """pytorch_grad_cam's package __init__ imports every CAM it has; three modules import
    torchvision for names that GradCAM and GradCAMPlusPlus never call (utils/image.py:
    Compose, Normalize, ToTensor for preprocess_image; sess.py: transforms.functional.resize
    for SESS; utils/model_targets.py: torchvision.ops.box_iou for FasterRCNNBoxScoreTarget).
    torchvision does not install beside our torch, so where it cannot be imported those names
    come from a fake module whose functions raise if ever called, for the import only."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        fake = _fake_torchvision()
        try:
            sys.modules.update(fake)
            module = importlib.import_module("pytorch_grad_cam")
        finally:  # no other test may see the fake
            for name in fake:
                sys.modules.pop(name, None)
        return module
    return importlib.import_module("pytorch_grad_cam")


def _fake_torchvision() -> dict[str, types.ModuleType]:
    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchvision is faked in this test: this function is not available")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    transforms.Compose = transforms.Normalize = transforms.ToTensor = unavailable
    functional.resize = ops.box_iou = unavailable
    root.transforms, transforms.functional, root.ops = transforms, functional, ops
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.ops": ops,
    }


def _upsampled(cams: np.ndarray, size) -> np.ndarray:
    return torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[:, None],
        size=size,
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()


def _their_signed_cam(
    method: str, model, layer: str, x, targets, reshape_transform=None
) -> np.ndarray:
    """pytorch-grad-cam's map before its ReLU and min-max scaling: its get_cam_image (channel
    weights from its get_cam_weights times the activations) on the activations and gradients
    its ActivationsAndGradients captured, upsampled like ours."""
    library = _pytorch_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = library.GradCAMPlusPlus if method == "gradcampp" else library.GradCAM
    module = model.get_submodule(layer)
    cam = cam_class(model, [module], reshape_transform=reshape_transform)
    try:
        cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        signed = cam.get_cam_image(x, module, None, activations, gradients)
    finally:
        cam.activations_and_grads.release()
    return _upsampled(signed, x.shape[2:])


def _relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


class _Scaled(torch.nn.Module):
    """The model with its logits times a constant: gradients grow by the same factor."""

    def __init__(self, model, factor: float):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_grad_cam_equals_pytorch_grad_cam(name, method):
    """On each model's default layer (the last block; nothing changes its output in place).
    pytorch-grad-cam adds 1e-6 to Grad-CAM++'s alpha denominator 2 g^2 + sum(A) g^3; where
    squared gradients are ~1e-6 (the demo model) that changes its maps by up to ~20%, so
    Grad-CAM++ is compared on the model with logits scaled by 1e4, where the 1e-6 is
    negligible and the formulas must agree."""
    model, x, _ = _case(name)
    layer = find_cam_layer(model, x)
    if method == "gradcampp":
        model, layer = _Scaled(model, 1e4), f"model.{layer}"
    ours = attribute(model, x, method, layer=layer)
    theirs = _their_signed_cam(method, model, layer, x, ours.targets)
    tolerance = 1e-5 if method == "gradcampp" else 1e-6
    assert _relative_difference(ours.maps, theirs) <= tolerance


def _cam_on_out_of_place_copy(model, layer: str, x, targets, plus_plus: bool) -> np.ndarray:
    """The Grad-CAM formulas in numpy on the layer's activation and gradient, taken on the
    torch.fx copy where every ReLU is out of place and the residual add is a plain add, so
    nothing after the layer changes its output."""
    from napari_pathviz.attribution.deeplift import functional_copy

    copy = functional_copy(model)
    kept = {}
    handle = copy.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: kept.setdefault("a", out)
    )
    try:
        score = copy(x)[np.arange(len(x)), targets].sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, kept["a"])
    a, g = kept["a"].detach().double().numpy(), grad.double().numpy()
    if plus_plus:
        denominator = 2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3
        alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    else:
        weights = g.mean(axis=(2, 3))
    return _upsampled((weights[:, :, None, None] * a).sum(axis=1), x.shape[2:])


@pytest.mark.parametrize("layer", ["layer1.bn1", "layer1.bn2", "layer2.bn1", "bn1"])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_grad_cam_on_layers_changed_in_place_afterwards(layer, method):
    """bn1 is followed by the block's in-place ReLU, bn2 by `out += identity`: our maps are the
    layer's own (equal to the formulas on the out-of-place copy); pytorch-grad-cam's are not."""
    model, x, _ = _case("resnet_maxpool_stem")
    ours = attribute(model, x, method, layer=layer)
    truth = _cam_on_out_of_place_copy(model, layer, x, ours.targets, method == "gradcampp")
    assert _relative_difference(ours.maps, truth) <= 1e-5
    theirs = _their_signed_cam(method, model, layer, x, ours.targets)
    assert _relative_difference(theirs, truth) >= 0.05  # the in-place change is real
    with torch.no_grad():  # and capturing it left the model's outputs as they were
        torch.testing.assert_close(torch.from_numpy(ours.logits), model(x))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_grad_cam_pp_with_their_eps_equals_pytorch_grad_cam_on_raw_logits(name):
    """With eps=1e-6 in alpha's denominator (--gradcampp-eps) our Grad-CAM++ is
    pytorch-grad-cam's on the raw logits; without it (the paper's eq. 19, our default) the
    maps differ, by 0.1-15% of the map's maximum on these models (the README's figure)."""
    model, x, _ = _case(name)
    layer = find_cam_layer(model, x)
    theirs_eps = attribute(model, x, "gradcampp", layer=layer, eps=1e-6)
    theirs = _their_signed_cam("gradcampp", model, layer, x, theirs_eps.targets)
    assert _relative_difference(theirs_eps.maps, theirs) <= 1e-5
    assert theirs_eps.metadata["eps"] == 1e-6
    paper = attribute(model, x, "gradcampp", layer=layer)
    np.testing.assert_array_equal(paper.targets, theirs_eps.targets)
    difference = _relative_difference(paper.maps, theirs)
    assert 5e-4 <= difference <= 0.15, difference
    if name == "resnet_maxpool_stem":  # the held-out ResNet-style net: the largest gap here
        assert difference >= 0.05, difference
