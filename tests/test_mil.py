"""Two-stage models (patch encoder + slide-level attention head): the heads' arithmetic, a model
trained on the demo slide in the test, `pathviz extract` with its card, the card's checks, and
pixels-to-slide attributions with their completeness."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from napari_pathviz._demo_mil import DEMO_MIL_CLASSES, demo_bags, demo_preprocess, save_demo_mil
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.mil import ClamSB, GatedAttentionMIL
from napari_pathviz.model_card import read_card
from napari_pathviz.slide_level import load_two_stage, slide_outputs


@pytest.fixture(scope="module")
def demo_patches():
    """The demo slide's patches (uint8), their table and their DAB-positive flags."""
    from napari_pathviz._demo import load_demo
    from napari_pathviz.inference import read_patch_batch

    slide, table = load_demo(with_predictions=False)
    df = table.df.reset_index(drop=True)
    patches = read_patch_batch(slide, df)
    return slide, table, patches, (df["annotation"] == "dab_positive").to_numpy()


@pytest.fixture(scope="module")
def trained(demo_patches, tmp_path_factory):
    """The demo MIL model trained here (seconds), saved as safetensors + card, loaded back."""
    from napari_pathviz._demo_mil import train_demo_mil

    _, _, patches, positive = demo_patches
    encoder, head = train_demo_mil(patches, positive)
    card = save_demo_mil(encoder, head, tmp_path_factory.mktemp("mil"))
    return card, load_two_stage(read_card(card))


@pytest.mark.parametrize("head", [GatedAttentionMIL(12, 10, 3), ClamSB(12, 10, 6, 3, 0.25)])
def test_attention_sums_to_one_and_contributions_add_up_to_the_slide_logit(head):
    torch.manual_seed(0)
    head.eval()
    bags = torch.randn(4, 9, 12)  # a batch of four bags of nine patches
    attention, _ = head.attend(bags)
    assert torch.allclose(attention.sum(-1), torch.ones(4), atol=1e-6)
    assert (attention > 0).all()
    contributions = attention.unsqueeze(-1) * head.patch_logits(bags)
    assert torch.allclose(contributions.sum(-2), head(bags), atol=1e-5)
    # One bag (n, D) gives one slide's logits, equal to the batched ones.
    assert torch.allclose(head(bags[1]), head(bags)[1], atol=1e-6)
    # The one-row replacement pixels-to-slide uses equals the head on the edited bag.
    replaced = torch.randn(5, 12)
    edited = bags[0].expand(5, 9, 12).clone()
    edited[:, 4] = replaced
    assert torch.allclose(head.replacing_one(bags[0], 4)(replaced), head(edited), atol=1e-5)


def test_clam_sb_takes_clams_parameter_names():
    """CLAM_SB's inference part under CLAM's names, nothing else (its training-only
    instance_classifiers are dropped on loading: test_mil_layouts.py)."""
    names = set(ClamSB(1024, 512, 256, n_classes=2, dropout=0.25).state_dict())
    assert names == {
        f"{module}.{p}"
        for module in (
            "attention_net.0",
            "attention_net.3.attention_a.0",
            "attention_net.3.attention_b.0",
            "attention_net.3.attention_c",
            "classifiers",
        )
        for p in ("weight", "bias")
    }


def test_the_trained_head_finds_the_positive_patches(demo_patches, trained):
    _, _, patches, positive = demo_patches
    _, model = trained
    x = demo_preprocess(patches)
    with torch.no_grad():
        features = model.encoder.model(x).numpy()
    bags, labels = demo_bags(positive, 100, 8, np.random.default_rng(123))
    outputs = [slide_outputs(model, features[b]) for b in bags]
    predicted = np.array([int(np.argmax(out.logits)) for out in outputs])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= 0.85, accuracy
    # In positive bags the attention goes to the positive patches.
    on_positive = [
        out.attention[positive[b]].sum()
        for out, b, y in zip(outputs, bags, labels, strict=True)
        if y
    ]
    assert np.median(on_positive) > 0.5, np.median(on_positive)
    whole = slide_outputs(model, features)
    assert whole.attention.sum() == pytest.approx(1.0, abs=1e-6)
    # The contributions add up to the slide logit, class by class.
    np.testing.assert_allclose(whole.contributions.sum(axis=0), whole.logits, atol=1e-5)
    assert whole.predicted == "dab_positive"


def test_gradient_x_feature_is_exact_for_a_head_linear_in_the_features():
    """For a head that averages the features and applies a Linear without bias, the slide
    logit is linear and homogeneous in the features: gradient x feature sums to it exactly."""
    from napari_pathviz.slide_level import TwoStageModel

    torch.manual_seed(1)
    head = MeanPoolHead(6, 2).eval()
    head.classifier.bias.data.zero_()
    model = TwoStageModel(None, head, ("a", "b"), 6, "test")
    features = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    out = slide_outputs(model, features)
    np.testing.assert_allclose(out.grad_x_feature.sum(axis=0), out.logits, atol=1e-5)
    assert out.attention is None  # no attention: only gradient x feature


def test_extract_writes_the_heads_columns_and_the_slide_prediction(demo_patches, trained, tmp_path):
    from napari_pathviz._demo import ensure_demo_data

    card, _ = trained
    paths = ensure_demo_data()
    out = tmp_path / "mil.csv"
    argv = ["extract", "--slide", str(paths["slide"]), "--patches", str(paths["patches"])]
    explain = ["--explain-top", "2", "--explain-samples", "200", "--explain-background", "8"]
    assert main([*argv, "-m", str(card), "-o", str(out), "--batch-size", "64", *explain]) == 0
    df = pd.read_csv(out)
    classes = DEMO_MIL_CLASSES
    for column in ["attention"] + [
        f"{kind}_{c}" for kind in ("contribution", "gradxfeat") for c in classes
    ]:
        assert column in df.columns, column
    assert len(df) == len(demo_patches[1])
    assert df["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    slide = json.loads((tmp_path / "mil.slide.json").read_text())
    assert slide["prediction"] == "dab_positive"
    assert set(slide["probabilities"]) == set(classes)
    assert sum(slide["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    for c in classes:  # attention x patch logit adds up to the slide logit
        assert df[f"contribution_{c}"].sum() == pytest.approx(slide["logits"][c], abs=1e-3)
    # Pixels to slide for the two most attended patches, beside the table.
    pixels = np.load(tmp_path / "mil.pixels.npz")
    assert pixels["maps"].shape == (2, 32, 32)
    top = df["attention"].nlargest(2)
    np.testing.assert_array_equal(pixels["x"], df["x"].to_numpy()[top.index])
    np.testing.assert_allclose(pixels["attention"], top.to_numpy(), rtol=1e-5)
    assert str(pixels["class_name"]) == "dab_positive"
    sums = pixels["maps"].reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(sums, pixels["output_delta"], rtol=0.05)
    # Rerunning without --overwrite is refused in one line, nothing replaced.
    assert main([*argv, "-m", str(card), "-o", str(out)]) == 2


def test_a_card_whose_encoder_output_differs_from_the_head_input_is_refused(trained, tmp_path):
    card, _ = trained
    data = json.loads(card.read_text())
    data["head"]["factory_kwargs"]["in_dim"] = 24
    from safetensors.torch import save_file

    save_file(GatedAttentionMIL(24, 16, 2).state_dict(), str(card.parent / "head24.safetensors"))
    data["head"]["weights"] = str(card.parent / "head24.safetensors")
    data["encoder"]["weights"] = str(card.parent / "encoder.safetensors")
    data.pop("feature_dim")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PathvizError) as err:
        load_two_stage(read_card(bad))
    message = str(err.value)
    assert "\n" not in message
    assert "encoder's output size (16)" in message and "head's input size (24)" in message
    # Through the CLI: exit 2, one line.
    from napari_pathviz._demo import ensure_demo_data

    paths = ensure_demo_data()
    argv = [
        "extract",
        "--slide",
        str(paths["slide"]),
        "-m",
        str(bad),
        "-o",
        str(tmp_path / "o.csv"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "o.csv").exists()
    # The card's feature_dim is checked too.
    data = json.loads(card.read_text())
    data["feature_dim"] = 32
    data["encoder"]["weights"] = str(card.parent / "encoder.safetensors")
    data["head"]["weights"] = str(card.parent / "head.safetensors")
    bad.write_text(json.dumps(data))
    with pytest.raises(PathvizError, match=r"feature_dim 32 differs from the encoder's output"):
        load_two_stage(read_card(bad))


def test_a_two_stage_card_needs_both_stages_and_known_fields(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"head": {"factory": "napari_pathviz.mil:GatedAttentionMIL"}}))
    with pytest.raises(PathvizError, match="needs both 'encoder' and 'head'"):
        read_card(card)
    card.write_text(
        json.dumps(
            {
                "encoder": {"factory": "napari_pathviz.mil:SmallConvEncoder", "mpp": -1},
                "head": {"factory": "napari_pathviz.mil:GatedAttentionMIL"},
            }
        )
    )
    with pytest.raises(PathvizError, match="field 'encoder' field 'mpp'"):
        read_card(card)


class MeanPoolHead(nn.Module):
    """A head linear in the features: the bag's mean feature through a Linear."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.in_dim = in_dim
        self.classifier = nn.Linear(in_dim, n_classes)

    def forward(self, h):
        return self.classifier(h.mean(dim=-2))


def test_pixels_to_slide_is_exact_for_a_linear_encoder_and_head():
    """Linear encoder + linear head in float64: the gradient is the same everywhere on the path,
    so the map sums to g(x) - E g(b) up to rounding, whatever the number of samples."""
    from napari_pathviz.attribution.slide_level import explain_slide_pixels
    from napari_pathviz.models import ModelSpec
    from napari_pathviz.slide_level import TwoStageModel

    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).double().eval()
    head = MeanPoolHead(5, 2).double().eval()
    model = TwoStageModel(ModelSpec(encoder, "linear"), head, ("a", "b"), 5, "linear")
    bag = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        features = encoder(bag)
    background = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    result = explain_slide_pixels(model, bag[[2, 4]], features, [2, 4], background, n_samples=20)
    assert result.maps.shape == (2, 8, 8)
    assert np.all(result.completeness_error < 1e-3), result.completeness_error
    # What the maps sum to is the slide logit minus the bag's logit with a baseline patch in place.
    with torch.no_grad():
        logit = head(features)[result.targets[0]]
        swapped = features.expand(4, 6, 5).clone()
        swapped[:, 2] = encoder(background)
        expected = float(logit - head(swapped)[:, result.targets[0]].mean())
    assert result.maps[0].sum() == pytest.approx(expected, rel=1e-5)


def test_pixels_to_slide_is_complete_for_the_trained_model(demo_patches, trained):
    from napari_pathviz.slide_level import explain_top_patches

    _, _, patches, positive = demo_patches
    _, model = trained
    rng = np.random.default_rng(5)
    bag = np.concatenate(
        [rng.choice(np.flatnonzero(~positive), 10), rng.choice(np.flatnonzero(positive), 2)]
    )
    prediction, result = explain_top_patches(
        model, patches[bag], k=2, n_samples=400, n_background=8
    )
    assert result.maps.shape == (2, 32, 32)
    assert prediction.predicted == "dab_positive"
    # The top-attended patches of a positive bag are its positive ones.
    assert positive[bag[result.patch_index]].all()
    assert np.all(result.completeness_error <= 0.05), result.completeness_error
    assert result.metadata["class_name"] == "dab_positive"
    assert result.metadata["slide_logit"] == pytest.approx(prediction.logits[1], abs=1e-4)
    assert np.all(np.abs(result.output_delta) > 1e-3)  # a patch that matters, not 0 / 0


def test_inference_widget_shows_attention_and_contribution_heatmaps(
    make_napari_viewer, qtbot, trained
):
    from napari_pathviz._widgets.inference import InferenceWidget

    card, _ = trained
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    widget = InferenceWidget(viewer)
    widget.model_path.value = str(card)  # the two-stage card names both stages' weights
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert "slide: dab_positive (p = " in widget.status.value, widget.status.value
    assert viewer.status.startswith("slide: dab_positive")
    features = patches.features
    assert features["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    names = [layer.name for layer in viewer.layers]
    attention = viewer.layers[next(n for n in names if n.startswith("attention — slide: "))]
    contribution = next(n for n in names if n.startswith("contribution_dab_positive — slide: "))
    assert viewer.layers[contribution].contrast_limits[0] < 0  # signed, symmetric about 0
    # Each patch's attention sits in the heatmap pixel over the patch's centre.
    centres = patches.data
    pixel = np.round((centres - np.asarray(attention.translate)) / np.asarray(attention.scale))
    pixel = pixel.astype(int)
    np.testing.assert_allclose(
        attention.data[pixel[:, 0], pixel[:, 1]], features["attention"], atol=1e-6
    )
    # A rerun replaces the slide-level layers instead of adding more.
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert sum(layer.name.startswith("attention — ") for layer in viewer.layers) == 1


def test_patch_level_commands_refuse_a_two_stage_model_in_one_line(trained, tmp_path, capsys):
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.models import load_model

    card, _ = trained
    with pytest.raises(PathvizError, match="a two-stage model .* runs with pathviz extract"):
        load_model(card)
    paths = ensure_demo_data()
    png = tmp_path / "maps.png"
    argv = ["shapley-plot", "--slide", str(paths["slide"]), "--patches", str(paths["patches"])]
    assert main([*argv, "-m", str(card), "-o", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two-stage model" in err[0], err
    assert not png.exists()


def _explain_in_the_widget(viewer, qtbot, card, k: int, samples: int):
    from napari_pathviz._widgets.inference import InferenceWidget

    widget = InferenceWidget(viewer)
    widget.model_path.value = str(card)
    explainer = widget.slide_explain
    explainer.k.value, explainer.samples.value = k, samples
    explainer.explain_button.clicked.emit()
    return widget, explainer


def test_inference_widget_explains_the_top_attended_patches_down_to_pixels(
    make_napari_viewer, qtbot, trained
):
    import dataclasses

    from napari_pathviz._layers import META_SLIDE
    from napari_pathviz._widgets._slide_level import TopAttendedExplainer
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.patches import KEY_COLUMNS, PatchTable
    from napari_pathviz.slide_level import explain_bag, extract_slide

    card, model = trained
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    slide_layer = next(layer for layer in viewer.layers if META_SLIDE in layer.metadata)
    widget, explainer = _explain_in_the_widget(viewer, qtbot, card, k=3, samples=200)
    qtbot.waitUntil(lambda: explainer.explain_button.enabled, timeout=180_000)
    status = widget.status.value
    assert status.startswith("slide: dab_positive (p = "), status
    # The core function on the same patches, same seed: the same patches and maps.
    slide = slide_layer.metadata[META_SLIDE]
    df = patches.features[list(KEY_COLUMNS)].reset_index(drop=True)
    _, prediction = extract_slide(slide, PatchTable(df, patches.name), model, embeddings=False)
    expected = explain_bag(
        model, prediction.features, prediction,
        lambda rows: read_patch_batch(slide, df.iloc[rows]), k=3, n_samples=200, seed=0,
    )  # fmt: skip
    shown = explainer.last_result
    top3 = np.argsort(-prediction.attention)[:3]
    np.testing.assert_array_equal(shown.patch_index, top3)
    np.testing.assert_array_equal(expected.patch_index, top3)
    np.testing.assert_allclose(shown.maps, expected.maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(shown.completeness_error, expected.completeness_error, atol=1e-4)
    assert np.all(expected.completeness_error <= 0.05), expected.completeness_error
    assert f"completeness error median {np.median(expected.completeness_error):.3f}" in status
    assert "for the top 3 attended patches" in status and "WARNING" not in status
    # The attribution layer: its maps on the three top-attended patches, nothing elsewhere.
    heat = viewer.layers["attributions: pixels to slide"]
    np.testing.assert_array_equal(heat.metadata["pathviz_attribution"]["rows"], top3)
    level0 = np.asarray(heat.data[0])
    covered = np.isfinite(level0)
    size = int(df["patch_size"].iloc[0])
    assert covered.sum() == 3 * size * size
    for j, row in enumerate(top3):
        x, y = int(df["x"][row]), int(df["y"][row])
        over = level0[y : y + size, x : x + size]
        assert np.isfinite(over).all()
        # A 32-px map over a 64-px patch: each map pixel covers 2 x 2 slide pixels, and the
        # patch's pixels sum to four times the map's (what it explains, up to resampling).
        assert over.sum() == pytest.approx(4 * shown.maps[j].sum(), rel=0.02, abs=1e-4)
    # More than 5% incomplete is a WARNING in the status line, as in the Attributions widget.
    worse = dataclasses.replace(shown, completeness_error=np.array([0.01, 0.2, 0.02]))
    line = TopAttendedExplainer.status_line(worse, {"prediction": "a", "probabilities": {}})
    assert "; WARNING: 1 of 3 maps incomplete" in line


def test_explaining_the_top_attended_patches_can_be_cancelled(make_napari_viewer, qtbot, trained):
    card, _ = trained
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    widget, explainer = _explain_in_the_widget(viewer, qtbot, card, k=4, samples=100_000)
    assert explainer.cancel_button.enabled
    explainer.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: explainer.explain_button.enabled, timeout=120_000)
    assert widget.status.value == "cancelled"
    assert "attributions: pixels to slide" not in viewer.layers
