"""The attribution engine against its references: shap.GradientExplainer for expected
gradients, a direct computation of the Grad-CAM / Grad-CAM++ formulas, and completeness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.deeplift import passes_through
from napari_pathviz.attribution.gradcam import find_cam_layer
from napari_pathviz.attribution.stored import open_attributions
from napari_pathviz.errors import PathvizError


@pytest.fixture(scope="module")
def demo_inputs():
    """The trained demo model and its real patches, model-ready."""
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_model import load_demo_model, read_patches, to_model_input

    slide, table = load_demo(with_predictions=False)
    x = to_model_input(read_patches(slide, table))
    rng = np.random.default_rng(0)
    explained = rng.choice(len(x), 8, replace=False)
    background = rng.choice(np.setdiff1d(np.arange(len(x)), explained), 16, replace=False)
    return load_demo_model(), x[explained], x[background]


def _smoothed(maps: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(m, 2) for m in maps])


def _shap_values(model, x, background, n_samples):
    import shap

    explainer = shap.GradientExplainer(model, background)
    values, index = explainer.shap_values(x, nsamples=n_samples, ranked_outputs=1, rseed=0)
    return np.asarray(values)[..., 0], np.asarray(index).ravel()


def test_expected_gradients_agree_with_shap(demo_inputs):
    model, x, background = demo_inputs
    ours = attribute(model, x, "gradient", background=background, n_samples=400)
    reference, shap_targets = _shap_values(model, x, background, 400)
    np.testing.assert_array_equal(ours.targets, shap_targets)  # both explain the predicted class
    a, b = _smoothed(ours.maps), _smoothed(reference.sum(axis=1))
    correlations = [np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(a, b, strict=True)]
    assert min(correlations) > 0.85, correlations


def test_completeness_beats_shap_and_is_within_5_percent(demo_inputs):
    model, x, background = demo_inputs
    ours = attribute(model, x, "gradient", background=background, n_samples=400)
    # A relative error means little where f(x) barely differs from the background's mean:
    # judge the patches whose output differs by at least a tenth of the typical difference.
    delta = np.abs(ours.output_delta)
    meaningful = delta >= 0.1 * np.median(delta)
    assert meaningful.sum() >= 6
    assert ours.completeness_error[meaningful].max() <= 0.05, ours.completeness_error
    # In absolute terms every patch is close (well under the typical difference).
    absolute = ours.completeness_error * delta
    assert absolute.max() <= 0.05 * np.median(delta)
    reference, targets = _shap_values(model, x, background, 400)
    with torch.no_grad():
        delta = (model(x)[np.arange(len(x)), targets] - model(background).mean(0)[targets]).numpy()
    shap_error = np.abs(reference.reshape(len(x), -1).sum(1) - delta) / np.abs(delta)
    assert ours.completeness_error.mean() <= shap_error.mean()
    # Plain random sampling (what shap does) at the same count is the worse estimator, judged
    # where a relative error means something (a patch whose output barely differs from the
    # background's, 0.05 against a median of 5 on the demo, would dominate both means).
    plain = attribute(model, x, "gradient", background=background, n_samples=400, stratified=False)
    assert plain.completeness_error[meaningful].mean() > ours.completeness_error[meaningful].mean()


def test_expected_gradients_options(demo_inputs):
    model, x, background = demo_inputs
    first = attribute(model, x[:2], "gradient", background=background, n_samples=32, seed=3)
    again = attribute(
        model, x[:2], "gradient", background=background, n_samples=32, seed=3, batch_size=7
    )  # batching does not change the estimate
    np.testing.assert_allclose(first.maps, again.maps, rtol=1e-4, atol=1e-6)
    smooth = attribute(
        model, x[:2], "gradient", background=background, n_samples=32, seed=3, local_smoothing=0.5
    )
    assert not np.allclose(smooth.maps, first.maps)
    fixed = attribute(model, x[:2], "gradient", background=background, n_samples=16, target=0)
    assert (fixed.targets == 0).all()
    prob = attribute(
        model, x[:2], "gradient", background=background, n_samples=64, output="softmax"
    )
    # Attributions of a probability sum to a probability difference: within [-1, 1].
    assert np.abs(prob.maps.reshape(2, -1).sum(1)).max() <= 1.0
    seen = []
    attribute(
        model,
        x[:2],
        "gradient",
        background=background,
        n_samples=16,
        batch_size=8,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (32, 32) and len(seen) == 4


class TinyCam(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 5, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.features(x))


def _direct_cam(model, x, target, plus_plus):
    """The formulas written out on the layer's activations and their gradients, in numpy."""
    activation = model.features(x).detach().requires_grad_(True)
    score = model.head(activation)[np.arange(len(x)), target].sum()
    (grad,) = torch.autograd.grad(score, activation)
    a, g = activation.detach().numpy(), grad.numpy()
    if plus_plus:
        denominator = 2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3
        alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    else:
        weights = g.mean(axis=(2, 3))
    cam = (weights[:, :, None, None] * a).sum(axis=1)
    return torch.nn.functional.interpolate(
        torch.from_numpy(cam)[:, None], size=x.shape[2:], mode="bilinear", align_corners=False
    )[:, 0].numpy()


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_grad_cam_matches_the_formulas(method):
    model = TinyCam().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    result = attribute(model, x, method, layer="features", target=[0, 1, 2, 1], batch_size=3)
    expected = _direct_cam(model, x, np.array([0, 1, 2, 1]), method == "gradcampp")
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-6)
    assert result.maps.shape == (4, 16, 16)
    if method == "gradcam":
        assert (result.maps < 0).any()  # signed: no ReLU, no clipping


def test_cam_layer_found_automatically(demo_inputs):
    model, x, _ = demo_inputs
    assert find_cam_layer(model, x) == "layer3"  # the last block with a spatial output
    assert find_cam_layer(TinyCam(), torch.zeros(1, 3, 16, 16)) == "features"
    result = attribute(model, x, "gradcam")
    assert result.metadata["layer"] == "layer3" and result.maps.shape == (8, 64, 64)


class ReusedRelu(nn.Module):
    """One ReLU module called after both convolutions: its output is not one feature map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.relu(self.conv2(self.relu(self.conv1(x)))))


def test_grad_cam_skips_and_refuses_a_reused_module():
    model, x = ReusedRelu().eval(), torch.randn(2, 3, 8, 8)
    assert find_cam_layer(model, x) == "conv2"  # not the later, reused relu
    with pytest.raises(PathvizError, match="--layer 'relu' runs 2 times in one forward pass"):
        attribute(model, x, "gradcam", layer="relu")
    assert attribute(model, x, "gradcam").metadata["layer"] == "conv2"


def test_bad_inputs(demo_inputs):
    model, x, background = demo_inputs
    with pytest.raises(PathvizError, match="target class 7 is out of range: the model has 3"):
        attribute(model, x, "gradcam", target=7)
    with pytest.raises(PathvizError, match="--layer 'layer9' is not a module of the model"):
        attribute(model, x, "gradcam", layer="layer9")
    with pytest.raises(PathvizError, match="selection is empty"):
        attribute(model, x[:0], "gradient", background=background)
    with pytest.raises(PathvizError, match="needs background patches"):
        attribute(model, x, "gradient")
    with pytest.raises(PathvizError, match="method must be one of"):
        attribute(model, x, "lime")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2))
    with pytest.raises(PathvizError, match=r"rejects patches of shape \(3, 32, 32\)"):
        attribute(flat, torch.zeros(2, 3, 32, 32), "gradient", background=torch.zeros(2, 3, 32, 32))
    spatial = nn.Conv2d(3, 2, 3)  # output (N, 2, h, w), not (N, classes)
    with pytest.raises(PathvizError, match="output must be \\(patches, classes\\)"):
        attribute(spatial, x, "gradient", background=background)
    with pytest.raises(PathvizError, match="background patches .* differ"):
        attribute(model, x, "gradient", background=background[:, :, :32, :32])


def test_deeplift_on_a_resnet_style_model_is_complete(demo_inputs):
    """The demo network reuses one in-place ReLU twice per block and adds residuals in place:
    DeepLIFT on its rewritten copy sums to f(x) - E f(reference) to float precision."""
    model, x, background = demo_inputs
    result = attribute(model, x, "deep", background=background)
    assert result.completeness_error.max() <= 1e-4, result.completeness_error
    assert result.per_channel.shape == (8, 3, 64, 64)
    # Both estimate Shapley-style attributions of the same output: the maps agree.
    gradient = attribute(model, x, "gradient", background=background, n_samples=400)
    correlations = [
        np.corrcoef(p.ravel(), q.ravel())[0, 1]
        for p, q in zip(_smoothed(result.maps), _smoothed(gradient.maps), strict=True)
    ]
    assert np.median(correlations) > 0.9, correlations


def test_the_libraries_fail_on_this_model_which_is_why_we_rewrite_it(demo_inputs):
    """shap's DeepExplainer and captum's DeepLift both break on the in-place ReLU module used
    twice per block; the rewritten copy computes the same outputs and has neither pattern."""
    import warnings

    import shap
    from captum.attr import DeepLift

    from napari_pathviz.attribution.deeplift import functional_copy

    model, x, background = demo_inputs
    # The libraries leave their hooks on the modules when they fail: give them copies.
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="modified inplace"):
            shap.DeepExplainer(copy.deepcopy(model), background).shap_values(x[:2])
        with pytest.raises(RuntimeError, match="used more than once"):
            DeepLift(copy.deepcopy(model)).attribute(x[:2], baselines=background[:2], target=0)
    rewritten = functional_copy(model)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x))
    relus = [m for m in rewritten.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    assert len({id(m) for m in relus}) == len(relus) == 7  # stem + 2 per block, one per call
    # The original model is untouched.
    assert model.layer1.relu.inplace


def test_deeplift_needs_references(demo_inputs):
    model, x, background = demo_inputs
    with pytest.raises(PathvizError, match="at least two background patches"):
        attribute(model, x, "deep", background=background[:1])
    with pytest.raises(PathvizError, match="'deep' needs background"):
        attribute(model, x, "deep")


def _cli_model_args():
    from importlib import resources

    weights = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
    return [
        "-m",
        weights,
        "--factory",
        "napari_pathviz._demo_model:build_demo_model",
        "--mean",
        "0.8",
        "0.72",
        "0.7",
        "--std",
        "0.15",
        "0.18",
        "0.18",
    ]


def test_shapley_plot_and_gradcam_commands(tmp_path):
    from conftest import run_cli
    from napari_pathviz._demo import ensure_demo_data

    paths = ensure_demo_data()
    common = [*_cli_model_args(), "--slide", paths["slide"], "--patches", paths["patches"]]
    result = run_cli(
        "shapley-plot",
        *common,
        "-bs",
        "4",
        "-ns",
        "64",
        "-o",
        tmp_path / "s.png",
        "--attributions-out",
        tmp_path / "maps.zarr",
        "--chunk-size",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert "warning: no CUDA GPU: attributions run on the CPU" in result.stderr
    assert (tmp_path / "s.png").stat().st_size > 20_000
    saved, keys = open_attributions(tmp_path / "maps.zarr")
    assert saved.maps.shape == (4, 64, 64) and list(keys.columns) == [
        "ID",
        "x",
        "y",
        "patch_size",
    ]
    assert "completeness error: median" in result.stdout
    # Every class of two patches, against references given as a .npy of images.
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.patches import load_patches
    from napari_pathviz.slide import open_slide

    references = read_patch_batch(
        open_slide(paths["slide"]), load_patches(paths["patches"]).df.iloc[-6:]
    )
    np.save(tmp_path / "refs.npy", references)
    result = run_cli(
        "shapley-plot",
        *common,
        "--ids",
        "0",
        "1",
        "--target",
        "each",
        "--background",
        tmp_path / "refs.npy",
        "-ns",
        "16",
        "-o",
        tmp_path / "each.png",
        "--attributions-out",
        tmp_path / "each.zarr",
    )
    assert result.returncode == 0, result.stderr
    each, _ = open_attributions(tmp_path / "each.zarr")
    np.testing.assert_array_equal(each.patch_of_rows(), [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(each.targets, [0, 1, 2, 0, 1, 2])
    assert (tmp_path / "each.png").stat().st_size > 20_000
    result = run_cli(
        "shapley-plot",
        *common,
        "-mth",
        "deep",
        "--ids",
        "0",
        "5",
        "-bs",
        "4",
        "-o",
        tmp_path / "d.png",
    )
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "gradcam",
        *common,
        "--top",
        "3",
        "dab_positive",
        "--method",
        "gradcampp",
        "-o",
        tmp_path / "g.png",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.png").stat().st_size > 20_000

    np.save(tmp_path / "bad.npy", np.zeros((2, 64, 64), np.float32))
    for args, message in (
        (["shapley-plot", "--ids", "99999"], "--ids: row 99999 is not in"),
        (["shapley-plot", "--target", "9", "-bs", "2", "-ns", "8"], "target class 9 is out of"),
        (["gradcam", "--layer", "nope"], "--layer 'nope' is not a module"),
        (["gradcam", "--top", "0", "dab_positive"], "the selection is empty"),
        (["shapley-plot", "--background", tmp_path / "s.png"], "s.png"),
        (["shapley-plot", "--background", tmp_path / "bad.npy"], "expected (N, H, W, 3) uint8"),
        (["shapley-plot", "--attributions-out", tmp_path / "maps.zarr"], "another job"),
        (["gradcam", "--chunk-size", "0"], "--chunk-size must be a whole number at least 1, got 0"),
        (
            ["shapley-plot", "--samples-per-batch", "0"],
            "--samples-per-batch must be a whole number at least 1",
        ),
    ):
        bad = run_cli(args[0], *common, *args[1:], "-o", tmp_path / "x.png")
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert lines[-1].startswith(f"pathviz {args[0]}: error: ") and message in lines[-1]


def fail_above(x, cap: int):
    if len(x) > cap:
        raise torch.OutOfMemoryError(f"simulated: {len(x)} > {cap}")
    return x


# A leaf for torch.fx, so that DeepLIFT's rewritten copy of a capped model stays capped; it
# returns its input, so DeepLIFT may pass gradients through it.
torch.fx.wrap("fail_above")
passes_through(fail_above)


class MemoryCapped(nn.Module):
    """Raises torch's real out-of-memory error above a batch size, like a full GPU would."""

    def __init__(self, model, cap):
        super().__init__()
        self.model, self.cap = model, cap

    def forward(self, x):
        return self.model(fail_above(x, self.cap))


def test_out_of_memory_halves_the_batch_and_loses_nothing(demo_inputs):
    from napari_pathviz.errors import PathvizWarning

    model, x, background = demo_inputs
    reference = attribute(
        model, x[:3], "gradient", background=background, n_samples=40, batch_size=120
    )
    capped = MemoryCapped(model, cap=30)
    with pytest.warns(PathvizWarning, match="batch size lowered to 30"):
        result = attribute(
            capped, x[:3], "gradient", background=background, n_samples=40, batch_size=120
        )
    assert result.metadata["batch_size"] == 30
    np.testing.assert_allclose(result.maps, reference.maps, rtol=1e-4, atol=1e-7)


def test_model_randomisation_sanity_check(demo_inputs, tmp_path):
    """Maps that explain the model lose their structure as its weights are randomised."""
    from conftest import run_cli
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.attribution.sanity import model_randomisation, parameterised_layers

    model, x, background = demo_inputs
    layers = parameterised_layers(model)
    assert layers[0] == "fc" and layers[-1] == "conv1"  # from the top down
    table = model_randomisation(model, x[:4], "gradient", background=background, n_samples=32)
    assert list(table["randomised_up_to"]) == layers
    assert table["spearman_mean"].iloc[-1] < 0.3  # signed maps: no longer related
    assert table["spearman_abs_mean"].iloc[-1] < 0.6
    assert model.fc.weight.abs().sum() > 0 and model.training is False  # original untouched
    completeness = table.attrs["original"].completeness_error
    assert completeness.shape == (4,)  # reported for the unrandomised model's maps

    import pandas as pd

    paths = ensure_demo_data()
    for method in ("gradcam", "deep"):
        out = tmp_path / f"sanity_{method}.csv"
        result = run_cli(
            "sanity-check",
            *_cli_model_args(),
            "--slide",
            paths["slide"],
            "--patches",
            paths["patches"],
            "-mth",
            method,
            "-bs",
            "3",
            "-o",
            out,
        )
        assert result.returncode == 0, result.stderr
        assert len(pd.read_csv(out)) == len(layers)
    # DeepLIFT's maps add up to f(x) - E f(b): the completeness line says so.
    line = next(s for s in result.stdout.splitlines() if s.startswith("completeness error"))
    assert float(line.rsplit("max ", 1)[1]) < 1e-3
