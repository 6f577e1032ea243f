"""DeepLIFT / DeepSHAP against its references: completeness on every architecture of the zoo
and the demo model for each explained output, shap's DeepExplainer and captum's DeepLiftShap
where their rules are ours, a case computed by hand in numpy, and the refusal of layers that
have no DeepLIFT rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.deeplift import functional_copy
from napari_pathviz.attribution.deeplift_rules import softmax_path_multipliers
from napari_pathviz.attribution.result import AttributionResult
from napari_pathviz.errors import PathvizError


def _demo_model():
    from napari_pathviz._demo_model import load_demo_model

    return load_demo_model()


ARCHITECTURES = {
    **zoo.ARCHITECTURES,
    "mixed_activations": zoo.mixed_activations,
    "demo": _demo_model,
}
SIZE = {"demo": 64}  # the demo model's patches; the zoo's models take 32 px


def _data(name: str, n: int = 5, n_refs: int = 3, dtype=torch.float32):
    size = SIZE.get(name, 32)
    model = ARCHITECTURES[name]().to(dtype)
    x = zoo.inputs(n, seed=1, size=size).to(dtype)
    references = (0.2 * zoo.inputs(n_refs, seed=2, size=size)).to(dtype)  # darker patches
    return model, x, references


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_complete_on_every_architecture_and_output(name):
    """The attributions of a patch sum to f(x) - mean f(r): to float rounding in float32
    (relative error <= 1e-4, measured <= 5e-5), and exactly up to float64 rounding (<= 1e-9,
    measured <= 1e-12), for the logit, the sigmoid and the softmax probability; the batch
    size (patches per call) does not change a number."""
    model, x, references = _data(name)
    for output in ("none", "sigmoid", "softmax"):
        one = attribute(model, x, "deep", background=references, output=output, batch_size=1)
        four = attribute(model, x, "deep", background=references, output=output, batch_size=4)
        assert one.completeness_error.max() <= 1e-4, (output, one.completeness_error)
        assert four.completeness_error.max() <= 1e-4, (output, four.completeness_error)
        scale = np.abs(one.per_channel).max()
        np.testing.assert_allclose(four.per_channel, one.per_channel, rtol=0, atol=1e-5 * scale)
        # The sums are what was explained, not something near zero (the softmax/sigmoid bug).
        total = one.per_channel.reshape(len(x), -1).sum(1)
        np.testing.assert_allclose(total, one.output_delta, rtol=1e-4)
    model, x, references = _data(name, n=3, dtype=torch.float64)
    for output in ("none", "sigmoid", "softmax"):
        exact = attribute(model, x, "deep", background=references, output=output, batch_size=4)
        assert exact.completeness_error.max() <= 1e-9, (output, exact.completeness_error)


def _shap_deep(model, x, references, output):
    import shap

    net = functional_copy(model)  # shap breaks on the in-place ReLU reused by ResNets
    if output == "sigmoid":
        net = nn.Sequential(net, nn.Sigmoid())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = shap.DeepExplainer(net, references).shap_values(x, check_additivity=False)
    return np.moveaxis(np.asarray(values), -1, 0)  # (classes, N, C, H, W)


@pytest.mark.parametrize("name", ["plain_maxpool", "avgpool_batchnorm", "demo"])
def test_agrees_with_shap_deep_explainer(name):
    """Where shap's rules are ours (rescale; max pooling with windows that do not overlap),
    shap's DeepExplainer on the functional copy gives the same attributions: measured
    identical to the last bit, asserted to 1e-5 of the largest value."""
    model, x, references = _data(name, n=2)
    for output in ("none", "sigmoid"):
        reference = _shap_deep(model, x, references, output)
        for k in range(len(reference)):
            ours = attribute(model, x, "deep", background=references, output=output, target=k)
            scale = np.abs(reference[k]).max()
            assert np.abs(ours.per_channel - reference[k]).max() <= 1e-5 * scale
            r = np.corrcoef(ours.per_channel.ravel(), reference[k].ravel())[0, 1]
            assert r >= 0.999999, (output, k, r)


def test_shap_is_incomplete_where_max_pool_windows_overlap():
    """Why shap is not the reference on a ResNet stem (3x3 max pool, stride 2): it
    un-pools each window's share with max_unpool, which overwrites where windows share an
    argmax instead of adding. Its attributions then miss f(x) - E f(r) by 14-41% (and 21x
    with references drawn like the patches); ours stay complete."""
    model, x, references = _data("resnet_maxpool_stem", n=4)
    ours = attribute(model, x, "deep", background=references, target=0)
    assert ours.completeness_error.max() <= 1e-4
    shap_values = _shap_deep(model, x, references, "none")[0]
    error = np.abs(shap_values.reshape(4, -1).sum(1) - ours.output_delta) / np.abs(
        ours.output_delta
    )
    assert error.min() > 0.05, error


@pytest.mark.parametrize("name", ["avgpool_batchnorm", "demo"])
def test_agrees_with_captum_without_max_pool(name):
    """captum's DeepLiftShap is right on models without max pooling: it matches ours to
    float rounding (measured 1e-9 of the largest value)."""
    from captum.attr import DeepLiftShap

    model, x, references = _data(name, n=3)
    ours = attribute(model, x, "deep", background=references, target=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DeepLiftShap(functional_copy(model)).attribute(x, references, target=1)
    theirs = theirs.detach().numpy()
    assert np.abs(ours.per_channel - theirs).max() <= 1e-6 * np.abs(theirs).max()
    assert np.corrcoef(ours.per_channel.ravel(), theirs.ravel())[0, 1] >= 0.999999


def test_captum_misses_the_output_next_to_a_max_pool():
    """The bug this implementation replaces: captum's rule for a ReLU next to a MaxPool2d."""
    from captum.attr import DeepLiftShap

    model, x, references = _data("plain_maxpool", n=4)
    ours = attribute(model, x, "deep", background=references, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DeepLiftShap(functional_copy(model)).attribute(x, references, target=0)
    total = theirs.detach().numpy().reshape(4, -1).sum(1)
    error = np.abs(total - ours.output_delta) / np.abs(ours.output_delta)
    assert error.max() > 0.05 and ours.completeness_error.max() <= 1e-4, error


def _by_hand(x, r, conv_w, conv_b, fc_w, fc_b):
    """DeepLIFT (rescale, cross-max) of Conv1x1 -> ReLU -> MaxPool(3, 2, pad 1) -> Linear,
    written from the definitions with loops over channels, windows and pixels."""
    channels, (h, w) = len(conv_w), x.shape
    act_x = np.maximum(conv_w[:, None, None] * x + conv_b[:, None, None], 0)
    act_r = np.maximum(conv_w[:, None, None] * r + conv_b[:, None, None], 0)
    pre_x = conv_w[:, None, None] * x + conv_b[:, None, None]
    pre_r = conv_w[:, None, None] * r + conv_b[:, None, None]
    pooled_shape = ((h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1)
    share = np.zeros((channels, h, w))  # sum over windows of g * (part of Delta y) per pixel
    for c in range(channels):
        for i in range(pooled_shape[0]):
            for j in range(pooled_shape[1]):
                rows = range(max(2 * i - 1, 0), min(2 * i + 2, h))
                cols = range(max(2 * j - 1, 0), min(2 * j + 2, w))
                window = [(a, b) for a in rows for b in cols]
                px = max(window, key=lambda p: act_x[c][p])  # first maximum, as torch
                pr = max(window, key=lambda p: act_r[c][p])
                y_x, y_r = act_x[c][px], act_r[c][pr]
                g = fc_w[c * pooled_shape[0] * pooled_shape[1] + i * pooled_shape[1] + j]
                share[c][px] += g * (max(y_x, y_r) - y_r)
                share[c][pr] += g * (y_x - max(y_x, y_r))
    attribution = np.zeros((h, w))
    for c in range(channels):
        for a in range(h):
            for b in range(w):
                d_act = act_x[c, a, b] - act_r[c, a, b]
                if d_act == 0:
                    continue
                relu_m = d_act / (pre_x[c, a, b] - pre_r[c, a, b])  # rescale
                attribution[a, b] += (
                    (x[a, b] - r[a, b]) * conv_w[c] * relu_m * share[c, a, b] / d_act
                )
    return attribution


def test_a_small_case_computed_by_hand():
    """Conv -> ReLU -> MaxPool (overlapping windows) -> Linear with one reference (given
    twice: DeepSHAP needs two), against the rules written out in numpy."""
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 2, 1)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.Linear(8, 1))
    model = model.double().eval()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    r = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    ours = attribute(model, x, "deep", background=torch.cat([r, r]), target=0)
    fc = model[4]
    expected = _by_hand(
        x[0, 0].numpy(),
        r[0, 0].numpy(),
        conv.weight.detach().numpy().ravel(),
        conv.bias.detach().numpy(),
        fc.weight.detach().numpy().ravel(),
        fc.bias.detach().numpy(),
    )
    # The maps are stored as float32; the float64 sums are checked through completeness.
    np.testing.assert_allclose(ours.maps[0], expected, rtol=1e-6, atol=1e-9)
    assert ours.completeness_error[0] <= 1e-12
    with torch.no_grad():
        delta = (model(x) - model(r)).item()
    assert abs(expected.sum() - delta) <= 1e-12 and abs(delta) > 1e-3


def test_softmax_rule_is_the_path_averaged_gradient_and_exact():
    """The softmax output's multipliers: the gradient of p_t averaged along z_r -> z_x
    (checked against 20,000 midpoints), whose dot product with z_x - z_r is
    p_t(z_x) - p_t(z_r) to 1e-12, also for steep paths (logits 40 apart)."""
    gen = torch.Generator().manual_seed(0)
    z_x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    z_r = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    z_x[0, 1] += 40  # a steep step
    target = torch.tensor([1, 0, 2, 3, 1, 0])
    m = softmax_path_multipliers(z_x, z_r, target)
    p = torch.softmax
    exact = p(z_x, 1)[range(6), target] - p(z_r, 1)[range(6), target]
    np.testing.assert_allclose((m * (z_x - z_r)).sum(1), exact, rtol=0, atol=1e-12)
    alphas = (torch.arange(20_000, dtype=torch.float64) + 0.5) / 20_000
    points = (z_r[None] + alphas[:, None, None] * (z_x - z_r)[None]).requires_grad_(True)
    picked = p(points, 2)[:, range(6), target].sum()
    brute = torch.autograd.grad(picked, points)[0].mean(0)
    np.testing.assert_allclose(m, brute, atol=1e-6)


def test_layers_without_a_rule_are_refused_by_name():
    x, references = zoo.inputs(2, seed=1), zoo.inputs(2, seed=2)
    with pytest.raises(PathvizError, match=r"layer 'blocks\.0\.norm1' \(LayerNorm\) has no"):
        attribute(zoo.tiny_vit(), x, "deep", background=references)
    with pytest.raises(PathvizError, match=r"'matmul' in 'blocks\.0'.*two activations"):
        attribute(zoo.tiny_vit(layer_norm=False), x, "deep", background=references)
    softmax_inside = nn.Sequential(nn.Flatten(), nn.Linear(3072, 8), nn.Softmax(1), nn.Linear(8, 2))
    with pytest.raises(PathvizError, match=r"layer '2' \(Softmax\) .*use -mth gradient"):
        attribute(softmax_inside, x, "deep", background=references)
    batch_stats = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    batch_stats(x)
    with pytest.raises(PathvizError, match=r"'1' \(BatchNorm2d\) uses batch statistics"):
        attribute(batch_stats.eval(), x, "deep", background=references)
    with pytest.raises(PathvizError, match=r"'relu' .* first axis is not the batch \(32, 4\)"):
        attribute(TokensFolded(), x, "deep", background=references)


class TokensFolded(nn.Module):
    """Folds the tokens into the batch axis around a ReLU: (patch, reference) pairs would mix
    there, so DeepLIFT refuses instead of pairing the wrong rows."""

    def __init__(self):
        super().__init__()
        self.embed, self.mlp, self.fc = nn.Conv2d(3, 4, 8, 8), nn.Linear(4, 4), nn.Linear(64, 2)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        n = tokens.shape[0]
        return self.fc(torch.relu(self.mlp(tokens.reshape(-1, 4))).reshape(n, -1))


def test_functional_copy_has_one_out_of_place_op_per_call_site():
    model = zoo.mixed_activations()
    model.stem[2] = nn.ReLU(inplace=True)
    rewritten = functional_copy(model)
    x = zoo.inputs(3, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x))
    inplace = [m for m in rewritten.modules() if getattr(m, "inplace", False)]
    assert not inplace and model.stem[2].inplace  # the original is untouched
    resnet = functional_copy(zoo.resnet_style())
    relus = [m for m in resnet.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 5  # stem + 2 per block


def test_incomplete_maps_are_reported():
    """Maps whose attributions miss f(x) - E f(b) by more than 5% are named, for the widget's
    status line and the CLI's warning."""
    result = AttributionResult(
        method="gradient",
        maps=np.zeros((4, 2, 2)),
        targets=np.zeros(4, np.int64),
        logits=np.zeros((4, 2)),
        probabilities=np.zeros((4, 2)),
        completeness_error=np.array([0.01, 0.2, np.nan, 0.049]),
    )
    np.testing.assert_array_equal(result.incomplete_rows(), [1, 2])
    np.testing.assert_array_equal(result.incomplete_rows(0.01), [1, 2, 3])
    assert result.completeness_warning().startswith("2 of 4 maps incomplete")
    assert "0.2" in result.completeness_warning()
    model, x, references = _data("demo", n=3)
    deep = attribute(model, x, "deep", background=references, output="softmax")
    assert len(deep.incomplete_rows()) == 0 and deep.completeness_warning() is None
    cam = attribute(model, x, "gradcam")
    assert len(cam.incomplete_rows()) == 0
