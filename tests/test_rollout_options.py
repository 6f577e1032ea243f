"""Attention rollout's head fusion (mean, max, min) and discard ratio, as jacobgil/vit-explain
offers them, against the published algorithm written out here in numpy (Abnar & Zuidema 2020;
vit-explain's fusion and discard): on random attention stacks and on the package's PatchViT,
through the engine, the CLI (and its store key) and the Attributions widget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.rollout import discard_weakest, rollout_relevance
from napari_pathviz.errors import PathvizError
from napari_pathviz.vit import PatchViT, demo_vit_card

SETTINGS = [(fusion, ratio) for fusion in ("mean", "max", "min") for ratio in (0.0, 0.5, 0.9)]
VIT_EXPLAIN_DEFAULTS = {"head_fusion": "max", "discard_ratio": 0.9}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_rollout(attentions, head_fusion: str, discard_ratio: float) -> np.ndarray:
    """The algorithm as published, per sample and layer: fuse the heads; zero the
    int(N * N * ratio) smallest entries of the fused matrix, but never entry 0 (the class
    token's attention to itself); add I; divide each row by its sum; multiply onto the layers
    below. ``attentions``: (B, heads, N, N) arrays in forward order. Returns (B, N, N)."""
    n = attentions[0].shape[-1]
    rolled = [np.eye(n) for _ in range(len(attentions[0]))]
    for attention in attentions:
        for b, heads in enumerate(np.asarray(attention, np.float64)):
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](heads, axis=0)
            flat = fused.flatten()
            weakest = np.argsort(flat, kind="stable")[: int(n * n * discard_ratio)]
            flat[weakest[weakest != 0]] = 0.0
            mixed = flat.reshape(n, n) + np.eye(n)
            mixed /= mixed.sum(axis=1, keepdims=True)
            rolled[b] = mixed @ rolled[b]
    return np.stack(rolled)


def random_attention(layers=3, batch=2, heads=4, tokens=17, seed=0):
    """Row-stochastic (B, heads, N, N) stacks with peaked rows, as trained attention has."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(scale=3.0, size=(layers, batch, heads, tokens, tokens))
    return [torch.softmax(torch.as_tensor(s), dim=-1) for s in scores]


@pytest.mark.parametrize(("head_fusion", "discard_ratio"), SETTINGS)
def test_rollout_of_random_attention_is_the_published_algorithm(head_fusion, discard_ratio):
    attentions = random_attention()
    ours = rollout_relevance(attentions, head_fusion, discard_ratio).numpy()
    expected = published_rollout([a.numpy() for a in attentions], head_fusion, discard_ratio)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-12)  # rows stay distributions


def test_discard_keeps_the_class_tokens_own_attention():
    """Entry (0, 0) the smallest of a (1, 4, 4) matrix: a 0.5 discard zeroes the 7 next
    smallest (8 chosen, the class token's own kept), nothing else."""
    fused = torch.arange(1.0, 17.0).reshape(1, 4, 4)
    fused[0, 0, 0] = 0.5
    kept = discard_weakest(fused.clone(), 0.5)
    assert kept[0, 0, 0] == 0.5
    expected = fused.clone().flatten()
    expected[1:8] = 0  # the values 2..8
    np.testing.assert_array_equal(kept.flatten().numpy(), expected.numpy())
    assert discard_weakest(fused, 0.0) is fused  # ratio 0: nothing dropped


# --- the package's PatchViT ----------------------------------------------------------------------


def patch_vit(attention: str, seed: int = 0) -> PatchViT:
    """3 blocks, 4 heads, 4x4 tokens of 8 px on 32 px inputs; position embeddings scaled up so
    that the random-weight attention is far from uniform."""
    torch.manual_seed(seed)
    model = PatchViT(image_size=32, depth=3, attention=attention).eval()
    with torch.no_grad():
        model.pos_embed.mul_(50.0)
    return model


def attention_of(model: PatchViT, x) -> list[np.ndarray]:
    """Each block's attention (B, heads, N, N) from PatchViT's forward pass written out."""
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], 1) + model.pos_embed
    attentions = []
    for block in model.blocks:
        h = block.norm1(tokens)
        if isinstance(block.attn, nn.MultiheadAttention):
            heads, weight, bias = (
                block.attn.num_heads,
                block.attn.in_proj_weight,
                block.attn.in_proj_bias,
            )
            project = block.attn.out_proj
        else:
            heads, weight, bias = block.attn.heads, block.attn.qkv.weight, block.attn.qkv.bias
            project = block.attn.proj
        b, n, d = h.shape
        q, k, v = (
            t.reshape(b, n, heads, d // heads).transpose(1, 2)
            for t in F.linear(h, weight, bias).chunk(3, dim=-1)
        )
        attention = torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, dim=-1)
        attentions.append(attention.numpy())
        tokens = tokens + project((attention @ v).transpose(1, 2).reshape(b, n, d))
        tokens = tokens + block.mlp(block.norm2(tokens))
    assert torch.allclose(model.head(model.norm(tokens)[:, 0]), model(x), atol=1e-5)
    return attentions


def on_pixels(rolled: np.ndarray) -> np.ndarray:
    """The class token's row over the 4x4 patch tokens, each on its 8x8 pixels."""
    row = rolled[:, 0, 1:].reshape(-1, 4, 4)
    return np.repeat(np.repeat(row, 8, axis=1), 8, axis=2)


@pytest.mark.parametrize("attention", ["torch", "softmax"])
def test_patch_vit_rollout_is_the_published_algorithm(attention):
    model, x = patch_vit(attention), zoo.inputs(3, seed=5)
    with torch.no_grad():
        attentions = attention_of(model, x)
    for head_fusion, discard_ratio in SETTINGS:
        result = attribute(
            model, x, "rollout", head_fusion=head_fusion, discard_ratio=discard_ratio
        )
        expected = on_pixels(published_rollout(attentions, head_fusion, discard_ratio))
        np.testing.assert_allclose(result.maps, expected, rtol=0, atol=1e-6)
        assert result.metadata["head_fusion"] == head_fusion
        assert result.metadata["discard_ratio"] == discard_ratio


@pytest.mark.parametrize("name", list(zoo.VISION_TRANSFORMERS))
def test_defaults_are_unchanged_and_discard_changes_the_map(name):
    """No options = mean and 0, the paper's rollout (0.5 mean_heads A + 0.5 I, multiplied up),
    bit for bit; vit-explain's defaults give another map."""
    model, x = zoo.VISION_TRANSFORMERS[name](), zoo.inputs(3, seed=7)
    default = attribute(model, x, "rollout")
    explicit = attribute(model, x, "rollout", head_fusion="mean", discard_ratio=0.0)
    np.testing.assert_array_equal(default.maps, explicit.maps)
    assert default.metadata["head_fusion"] == "mean" and default.metadata["discard_ratio"] == 0
    theirs = attribute(model, x, "rollout", **VIT_EXPLAIN_DEFAULTS).maps
    discarded = attribute(model, x, "rollout", discard_ratio=0.9).maps
    for other in (theirs, discarded):
        assert np.abs(other - default.maps).max() > 1e-3 * default.maps.max()


def test_bad_options_are_refused_in_one_line():
    model, x = zoo.hand_attention_vit(), zoo.inputs(1)
    for options, flag in [
        ({"discard_ratio": 1.0}, "--discard-ratio"),
        ({"discard_ratio": -0.1}, "--discard-ratio"),
        ({"discard_ratio": float("nan")}, "--discard-ratio"),
        ({"discard_ratio": "0.5"}, "--discard-ratio"),
        ({"head_fusion": "median"}, "--head-fusion"),
    ]:
        with pytest.raises(PathvizError, match=flag) as info:
            attribute(model, x, "rollout", **options)
        assert "\n" not in str(info.value)


def _map_correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Pearson r of each patch's token values (the maps' 8x8 blocks are constant)."""
    a, b = (
        maps_a[:, ::8, ::8].reshape(len(maps_a), -1),
        maps_b[:, ::8, ::8].reshape(len(maps_b), -1),
    )
    return np.array([np.corrcoef(u, v)[0, 1] for u, v in zip(a, b, strict=True)])


@pytest.mark.parametrize("name", list(zoo.VISION_TRANSFORMERS))
def test_vit_explain_defaults_against_ours_on_the_zoo_vits(name):
    """The figure the README quotes: the correlation of vit-explain's default maps (max, 0.9)
    with ours (mean, 0) on 16 random inputs per zoo ViT; related maps, not the same."""
    model, x = zoo.VISION_TRANSFORMERS[name](), zoo.inputs(16, seed=11)
    ours = attribute(model, x, "rollout").maps
    theirs = attribute(model, x, "rollout", **VIT_EXPLAIN_DEFAULTS).maps
    r = _map_correlations(ours, theirs)
    assert 0.2 < np.median(r) < 0.9  # measured: 0.68 and 0.38 (README)


def test_the_store_key_holds_every_option_but_the_defaults_keep_old_stores(tmp_path):
    """A store made without options (as before they existed) is reopened by a run that names
    the defaults; any other fusion or ratio is another job, refused on that store."""
    from napari_pathviz.attribution.stored import explain

    model, x, store = zoo.hand_attention_vit(), zoo.inputs(2, seed=3), tmp_path / "r.zarr"
    first = explain(model, x, "rollout", store=store)
    again = explain(model, x, "rollout", store=store, head_fusion="mean", discard_ratio=0.0)
    np.testing.assert_array_equal(again.maps, first.maps)
    for options in ({"head_fusion": "max"}, {"head_fusion": "min"}, {"discard_ratio": 0.5}):
        with pytest.raises(PathvizError, match="options"):
            explain(model, x, "rollout", store=store, **options)
        other = explain(model, x, "rollout", store=tmp_path / f"{options}.zarr", **options)
        assert not np.allclose(other.maps, first.maps)


def test_a_cohort_slides_store_is_named_by_the_options_but_not_the_defaults():
    from napari_pathviz.cohort_explain import ExplainSettings

    def job(**options):
        options = {"layer": None, **options}
        return ExplainSettings("rollout", "dab_positive", 4, options=options).job()

    assert job() == job(head_fusion="mean", discard_ratio=0.0)
    named = [job(head_fusion=f, discard_ratio=r) for f, r in SETTINGS]
    assert len({json.dumps(j, sort_keys=True) for j in named}) == len(SETTINGS)


# --- the CLI and the Attributions widget ---------------------------------------------------------


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    """An untrained PatchViT (32 px, 2 blocks) saved as safetensors with its model card beside
    it (vit.json, found by the widget) and as --model-card."""
    from safetensors.torch import save_file

    model = patch_vit("torch")
    folder = tmp_path_factory.mktemp("vit_rollout")
    weights, card = folder / "vit.safetensors", folder / "vit.json"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    card.write_text(json.dumps(demo_vit_card(model)))
    return {"model": model, "weights": weights, "card": card}


def _demo_inputs(rows_xy):
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.models import ModelSpec
    from napari_pathviz.patches import load_patches
    from napari_pathviz.slide import open_slide
    from napari_pathviz.vit import DEMO_MEAN, DEMO_STD

    paths = ensure_demo_data()
    slide = open_slide(paths["slide"])
    table = load_patches(paths["patches"], slide_shape=(slide.height, slide.width)).df
    rows = table.set_index(["x", "y"]).loc[rows_xy].reset_index()
    spec = ModelSpec(None, "", input_size=32, mean=DEMO_MEAN, std=DEMO_STD)
    return spec.preprocess(read_patch_batch(slide, rows))


def test_cli_stores_the_options_maps_and_keys_the_store_by_them(vit_files, tmp_path, capsys):
    """``gradcam --method rollout --head-fusion max --discard-ratio 0.9`` stores what the engine
    computes with those options; the same store asked for with other options is refused (its
    job key holds them), and leaves the store as it was."""
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.attribution.stored import open_attributions
    from napari_pathviz.cli import main

    paths = ensure_demo_data()
    store = tmp_path / "rollout.zarr"
    args = ["gradcam", "-m", str(vit_files["weights"]), "--model-card", str(vit_files["card"])]
    args += ["--slide", str(paths["slide"]), "--patches", str(paths["patches"])]
    args += ["--ids", "3", "40", "77", "--method", "rollout", "--device", "cpu"]
    args += ["--attributions-out", str(store)]
    options = ["--head-fusion", "max", "--discard-ratio", "0.9"]
    assert main([*args, *options, "-o", str(tmp_path / "a.png")]) == 0, capsys.readouterr()
    stored, keys = open_attributions(store)
    assert stored.metadata["head_fusion"] == "max" and stored.metadata["discard_ratio"] == 0.9
    x = _demo_inputs(list(zip(keys["x"], keys["y"], strict=True)))
    expected = attribute(vit_files["model"], x, "rollout", **VIT_EXPLAIN_DEFAULTS).maps
    np.testing.assert_allclose(np.asarray(stored.maps), expected, rtol=1e-5, atol=1e-7)
    assert np.abs(expected - attribute(vit_files["model"], x, "rollout").maps).max() > 1e-4
    before = {p.relative_to(store): p.stat().st_mtime_ns for p in store.rglob("*")}
    capsys.readouterr()
    for other in (["--head-fusion", "max"], ["--discard-ratio", "0.5"]):
        assert main([*args, *other, "-o", str(tmp_path / "b.png")]) == 2
        error = capsys.readouterr().err.strip()
        assert "rollout.zarr" in error and "options" in error and "\n" not in error, error
    assert {p.relative_to(store): p.stat().st_mtime_ns for p in store.rglob("*")} == before
    assert not (tmp_path / "b.png").exists()


def test_widget_shows_the_rollout_fields_and_explains_with_them(
    vit_files, make_napari_viewer, qtbot
):
    """Opened as napari's Plugins menu opens it: Head fusion and Discard ratio are shown for
    rollout only; rollout with max and 0.9 puts on the slide the maps the engine computes with
    those options."""
    pytest.importorskip("napari")
    from napari_pathviz._widgets._attribution_layers import LAYER_PREFIX, META_ATTRIBUTION

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Attributions")
    qtbot.waitUntil(widget.method.native.isVisible)  # the dock is on screen
    fields = (widget.rollout.head_fusion, widget.rollout.discard_ratio)
    assert widget.method.value == "gradient" and not any(f.visible for f in fields)
    widget.method.value = "rollout"
    assert all(f.visible for f in fields)
    widget.method.value = "chefer"
    assert not any(f.visible for f in fields)
    widget.method.value = "rollout"
    widget.rollout.head_fusion.value = "max"
    widget.rollout.discard_ratio.value = 0.9
    widget.form.model_path.value = str(vit_files["weights"])
    widget.device.value = "cpu"
    patches.selected_data = {3, 40, 77}
    viewer.layers.selection.active = patches
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("rollout: 3 patches"), widget.status.value
    heat = viewer.layers[f"{LAYER_PREFIX}rollout"]
    rows = list(heat.metadata[META_ATTRIBUTION]["rows"])
    assert sorted(rows) == [3, 40, 77]
    f = patches.features
    x = _demo_inputs([(int(f["x"].iat[r]), int(f["y"].iat[r])) for r in rows])
    expected = attribute(vit_files["model"], x, "rollout", **VIT_EXPLAIN_DEFAULTS).maps
    result = widget._last[0]
    assert result.metadata["head_fusion"] == "max" and result.metadata["discard_ratio"] == 0.9
    np.testing.assert_allclose(np.asarray(result.maps), expected, rtol=1e-5, atol=1e-7)


def test_sanity_check_randomises_the_rollout_asked_for(vit_files, tmp_path, capsys):
    """``sanity-check -mth rollout`` passes the options on: vit-explain's settings give other
    correlations than the defaults on the same patches and weights."""
    import pandas as pd

    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.cli import main

    paths = ensure_demo_data()
    args = ["sanity-check", "-m", str(vit_files["weights"]), "--model-card"]
    args += [str(vit_files["card"]), "--slide", str(paths["slide"]), "--patches"]
    args += [str(paths["patches"]), "--ids", "3", "40", "77", "-mth", "rollout", "--device", "cpu"]
    tables = []
    for name, options in (
        ("ours", []),
        ("theirs", ["--head-fusion", "max", "--discard-ratio", "0.9"]),
    ):
        out = tmp_path / f"{name}.csv"
        assert main([*args, *options, "-o", str(out)]) == 0, capsys.readouterr()
        tables.append(pd.read_csv(out))
    numbers = [t.select_dtypes("number").to_numpy() for t in tables]
    assert all(np.isfinite(n).all() for n in numbers) and numbers[0].shape == numbers[1].shape
    assert not np.allclose(*numbers)
