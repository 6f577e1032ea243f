"""Model loading and its preprocessing, on tiny real torch.nn models saved every way users save
them: TorchScript, state dict + factory, trusted pickles, PathFlowAI's extracted-model dict."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_pathviz._demo_model import MEAN, STD, build_demo_model
from napari_pathviz.errors import PathvizError
from napari_pathviz.models import ModelSpec, check_model, import_factory, load_model

DEMO_FACTORY = "napari_pathviz._demo_model:build_demo_model"

# torch 2.10+ deprecates torch.jit; users still bring TorchScript files.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch\\.jit.*:DeprecationWarning")

# A user's architecture in their own module: a class and a factory with keyword arguments.
TINY_SOURCE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=4, n_classes=2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.hidden = nn.Linear(width, 8)
        self.head = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.head(torch.relu(self.hidden(self.features(x))))


def build(width=4, n_classes=2):
    return TinyNet(width, n_classes)


NOT_CALLABLE = 3
"""

# Unpickling this object writes a marker file: proof of whether a pickle's code ran.
PAYLOAD_SOURCE = """
from pathlib import Path

from torch import nn


def rebuild(marker):
    Path(marker).write_text("pickle code ran")
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(2))


class Payload(nn.Module):
    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    def __reduce__(self):
        return rebuild, (self.marker,)
"""


def _module_file(tmp_path, monkeypatch, name: str, source: str):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    import importlib

    module = importlib.import_module(name)
    return module


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    name = "pathviz_test_tinynet"
    module = _module_file(tmp_path, monkeypatch, name, TINY_SOURCE)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
def payload_module(tmp_path, monkeypatch):
    name = "pathviz_test_payload"
    module = _module_file(tmp_path, monkeypatch, name, PAYLOAD_SOURCE)
    yield module
    sys.modules.pop(name, None)


def _trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial batch-norm statistics, then eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        model.train()
        for _ in range(3):
            model(torch.rand(8, 3, 24, 24) * 3 + 1)
    return model.eval()


def _sequential() -> nn.Module:
    return _trained(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        )
    )


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(5, 3, 24, 24)


def _same_outputs(original: nn.Module, loaded, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected, got = original(x), loaded(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip(tmp_path, x, how):
    model = _sequential()
    compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x[:2])
    path = tmp_path / "model.pt"
    torch.jit.save(compiled, str(path))
    spec = load_model(path, trust_model=True)
    assert spec.metadata["kind"] == "TorchScript" and spec.scripted
    assert spec.source == str(path) and not spec.model.training
    _same_outputs(model, spec.model, x)


def test_state_dict_with_demo_factory(tmp_path, x):
    model = _trained(build_demo_model())
    path = tmp_path / "demo_sd.pt"
    torch.save(model.state_dict(), path)
    spec = load_model(path, factory=DEMO_FACTORY, mean=MEAN, std=STD)
    assert spec.metadata["kind"] == "state dict + factory" and not spec.scripted
    assert spec.mean == MEAN and spec.std == STD and not spec.model.training
    _same_outputs(model, spec.model, x)


def test_state_dict_with_factory_kwargs(tmp_path, x, tiny_module):
    model = _trained(tiny_module.build(width=6, n_classes=5))
    path = tmp_path / "tiny_sd.pt"
    torch.save(model.state_dict(), path)
    spec = load_model(
        path,
        factory="pathviz_test_tinynet:build",
        factory_kwargs={"width": 6, "n_classes": 5},
    )
    assert type(spec.model).__name__ == "TinyNet" and spec.model.head.out_features == 5
    _same_outputs(model, spec.model, x)
    # A class is a factory too; and checkpoints nesting the weights under "state_dict" load.
    nested = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, nested)
    spec = load_model(
        nested, factory="pathviz_test_tinynet:TinyNet", factory_kwargs={"width": 6, "n_classes": 5}
    )
    _same_outputs(model, spec.model, x)


@pytest.mark.parametrize("kind", ["sequential", "user class"])
def test_trusted_whole_module_pickle(tmp_path, x, tiny_module, kind):
    model = _sequential() if kind == "sequential" else _trained(tiny_module.build(5, 4))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    spec = load_model(path, trust_model=True)
    assert spec.metadata["kind"] == "pickle" and spec.model is not model
    assert spec.input_size is None and spec.mean is None
    _same_outputs(model, spec.model, x)


def test_pickle_is_loaded_in_eval_mode(tmp_path, x):
    """PathFlowAI left models in train mode: batch norm would then use batch statistics."""
    model = _sequential()
    model.train()
    path = tmp_path / "train_mode.pt"
    torch.save(model, path)
    spec = load_model(path, trust_model=True)
    assert not spec.model.training and not any(m.training for m in spec.model.modules())
    _same_outputs(model.eval(), spec.model, x)


def test_pathflowai_extracted_model(tmp_path, x):
    model = _sequential()
    mean, std = [0.7, 0.6, 0.65], np.array([0.1, 0.2, 0.15])
    path = tmp_path / "pathflowai.pkl"
    torch.save(
        {
            "model": model,
            "dataset_opts": {
                "patch_size": 64,
                "patch_info_file": "patch_info.db",
                "input_dir": "inputs",
            },
            # As PathFlowAI's model_training saves it: patch_size is the resized side (its
            # patch_resize), resize a flag.
            "transform_opts": {
                "patch_size": 48,
                "mean": mean,
                "std": std,
                "resize": True,
                "transform_platform": "torch",
                "user_transforms": {},
            },
        },
        path,
    )
    spec = load_model(path, trust_model=True)
    assert spec.metadata["kind"] == "PathFlowAI extracted model"
    assert spec.mean == pytest.approx(tuple(mean)) and spec.std == pytest.approx(tuple(std))
    assert spec.input_size == 48 and spec.resize_mode == "resize"
    assert spec.metadata["transform_opts"]["patch_size"] == 48
    _same_outputs(model, spec.model, x)
    # Its patches of 64 px are resized to 48 and normalised with its statistics.
    patches = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert tuple(spec.preprocess(patches).shape) == (2, 3, 48, 48)
    assert check_model(spec, 64) == 3
    # The user's choices come first.
    torch.save(
        {"model": model, "transform_opts": {"mean": mean, "std": std, "patch_size": 32}}, path
    )
    assert load_model(path, trust_model=True).input_size == 32
    spec = load_model(path, trust_model=True, input_size=40, mean=(0.5, 0.5, 0.5))
    assert spec.input_size == 40 and spec.mean == (0.5, 0.5, 0.5)


def test_pathflowai_transform_opts_defaults_and_user_normalization(tmp_path):
    """What PathFlowAI's get_data_transforms normalises with: user_transforms' normalization
    first, then transform_opts' mean/std, else its own defaults (0.7, 0.6, 0.7) / 0.15."""
    path = tmp_path / "pathflowai.pkl"
    torch.save({"model": _sequential(), "transform_opts": {"patch_size": 32, "mean": []}}, path)
    spec = load_model(path, trust_model=True)
    assert spec.mean == (0.7, 0.6, 0.7) and spec.std == (0.15, 0.15, 0.15)
    assert spec.normalisation_warning() is None
    user = {"normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.1]}}
    opts = {"patch_size": 32, "mean": [0.1] * 3, "std": [0.3] * 3, "user_transforms": user}
    torch.save({"model": _sequential(), "transform_opts": opts}, path)
    spec = load_model(path, trust_model=True)
    assert spec.mean == (0.5, 0.4, 0.3) and spec.std == pytest.approx((0.2, 0.2, 0.1))


# --- refusals ------------------------------------------------------------------------------


def test_untrusted_pickle_is_refused_without_running_its_code(tmp_path, payload_module):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "payload.pt"
    torch.save(payload_module.Payload(str(marker)), path)
    assert not marker.exists()
    with pytest.raises(PathvizError) as err:
        load_model(path)
    assert str(path) in str(err.value) and "--trust-model" in str(err.value)
    assert not marker.exists(), "the untrusted pickle's code ran"
    # The same pickle, trusted, does run its code: the marker proves something.
    spec = load_model(path, trust_model=True)
    assert marker.read_text() == "pickle code ran"
    assert isinstance(spec.model, nn.Sequential)


def test_pathflowai_dict_needs_trust_too(tmp_path):
    path = tmp_path / "pathflowai.pkl"
    torch.save({"model": _sequential(), "transform_opts": {"mean": [0.5] * 3}}, path)
    with pytest.raises(PathvizError, match="--trust-model"):
        load_model(path)


def test_state_dict_without_factory(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_demo_model().state_dict(), path)
    with pytest.raises(PathvizError, match="--factory package.module:function") as err:
        load_model(path)
    assert str(path) in str(err.value) and "state dict" in str(err.value)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_package_pv.models:build", "cannot import no_such_package_pv.models"),
        ("napari_pathviz._demo_model:no_such_builder", "_demo_model has no no_such_builder"),
        ("napari_pathviz._demo_model", "expected package.module:function"),
        (":build_demo_model", "expected package.module:function"),
        ("napari_pathviz._demo_model:", "expected package.module:function"),
        ("napari_pathviz._demo_model:MEAN", "MEAN is not callable"),
    ],
)
def test_bad_factories(tmp_path, factory, message):
    with pytest.raises(PathvizError, match="--factory") as err:
        import_factory(factory)
    assert message in str(err.value)
    path = tmp_path / "sd.pt"
    torch.save(build_demo_model().state_dict(), path)
    with pytest.raises(PathvizError) as err:
        load_model(path, factory=factory)
    assert message in str(err.value)


def test_factory_that_fails_to_build(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_demo_model().state_dict(), path)
    with pytest.raises(PathvizError, match="building the model failed.*TypeError"):
        load_model(path, factory=DEMO_FACTORY, factory_kwargs={"depth": 50})


def test_state_dict_keys_that_do_not_fit(tmp_path):
    state = build_demo_model().state_dict()
    state["head.weight"] = state.pop("fc.weight")
    state["head.bias"] = state.pop("fc.bias")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(PathvizError) as err:
        load_model(path, factory=DEMO_FACTORY)
    message = str(err.value)
    assert str(path) in message and DEMO_FACTORY in message
    assert "missing keys fc.weight, fc.bias" in message
    assert "unexpected keys head.weight, head.bias" in message


def test_state_dict_shapes_that_do_not_fit(tmp_path):
    path = tmp_path / "three_classes.pt"
    torch.save(build_demo_model().state_dict(), path)  # fc: 3 classes
    with pytest.raises(PathvizError, match="fc.weight"):
        load_model(path, factory=DEMO_FACTORY, factory_kwargs={"n_classes": 5})


def test_not_a_model(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    with pytest.raises(PathvizError, match="not a model") as err:
        load_model(text)
    assert str(text) in str(err.value)
    for obj, name in [([1, 2, 3], "list"), (torch.zeros(3), "Tensor"), ({}, "dict")]:
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        with pytest.raises(PathvizError, match=f"not a model \\({name}\\)"):
            load_model(path, trust_model=True)
    # A trusted pickle of something else than a model.
    path = tmp_path / "numbers.pkl"
    torch.save({"values": np.arange(3)}, path)
    with pytest.raises(PathvizError, match="holds dict, not a model"):
        load_model(path, trust_model=True)


def test_random_bytes_trusted(tmp_path):
    """Trust does not make garbage a model: it is refused before any unpickling."""
    path = tmp_path / "random.bin"
    path.write_bytes(b"_" + np.random.default_rng(0).bytes(4095))
    with pytest.raises(PathvizError, match="not a model file") as err:
        load_model(path, trust_model=True)
    assert str(path) in str(err.value)


def test_random_bytes_are_not_called_a_pickle(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(b"_" + np.random.default_rng(0).bytes(4095))
    with pytest.raises(PathvizError, match="not a model") as err:
        load_model(path)
    assert "--trust-model" not in str(err.value)


def test_broken_torchscript_archive(tmp_path):
    path = tmp_path / "broken.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("broken/constants.pkl", b"not a pickle")
        z.writestr("broken/code/__torch__.py", "garbage")
    with pytest.raises(PathvizError, match="not a loadable TorchScript model"):
        load_model(path, trust_model=True)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(PathvizError, match="no such file or directory") as err:
        load_model(tmp_path / "absent.pt")
    assert "absent.pt" in str(err.value)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(_sequential()), str(path))
    with pytest.raises(PathvizError, match="--activation must be one of auto, none"):
        load_model(path, activation="relu")
    with pytest.raises(PathvizError, match="--resize-mode must be one of resize, crop"):
        load_model(path, resize_mode="pad")
    with pytest.raises(PathvizError, match="--channel-order must be RGB or BGR"):
        load_model(path, channel_order="rgb")


# --- preprocessing -------------------------------------------------------------------------


@pytest.fixture
def patches() -> np.ndarray:
    """Different content per channel, so that a channel flip shows."""
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    out[..., 0] //= 4  # red dark, blue bright
    out[..., 2] = 255 - out[..., 2] // 4
    return out


def _spec(**kwargs) -> ModelSpec:
    return ModelSpec(nn.Identity(), "identity.pt", **kwargs)


def _by_hand(patches: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], computed without the package."""
    return torch.tensor(patches.transpose(0, 3, 1, 2).astype(np.float64) / 255.0).float()


def test_preprocess_normalises_like_a_hand_computation(patches):
    mean, std = (0.8, 0.7, 0.6), (0.1, 0.2, 0.3)
    got = _spec(mean=mean, std=std).preprocess(patches)
    assert got.dtype == torch.float32 and tuple(got.shape) == (3, 3, 40, 40)
    expected = np.empty((3, 3, 40, 40), np.float64)
    for c in range(3):
        expected[:, c] = (patches[..., c] / 255.0 - mean[c]) / std[c]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    # No normalisation: [0, 1]; a mean without std divides by 1.
    torch.testing.assert_close(_spec().preprocess(patches), _by_hand(patches))
    got = _spec(mean=mean).preprocess(patches)
    np.testing.assert_allclose(
        got.numpy(), _by_hand(patches).numpy() - np.array(mean)[None, :, None, None], atol=1e-6
    )
    # An alpha channel is dropped.
    rgba = np.concatenate([patches, np.full(patches.shape[:3] + (1,), 9, np.uint8)], axis=-1)
    torch.testing.assert_close(_spec().preprocess(rgba), _by_hand(patches))


def test_preprocess_bgr_flips_before_normalising(patches):
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.3)
    got = _spec(channel_order="BGR", mean=mean, std=std).preprocess(patches)
    bgr = patches[..., ::-1]
    expected = np.stack(
        [(bgr[..., c] / 255.0 - mean[c]) / std[c] for c in range(3)], axis=1
    )  # mean/std are in the model's (BGR) channel order
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    rgb = _spec(mean=mean, std=std).preprocess(patches)
    assert not torch.allclose(got, rgb)


@pytest.mark.parametrize("size", [24, 13, 40, 56])
def test_preprocess_resizes(patches, size):
    got = _spec(input_size=size).preprocess(patches)
    assert tuple(got.shape) == (3, 3, size, size)
    expected = F.interpolate(
        _by_hand(patches),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=size < 40,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_downsizing_is_antialiased():
    """A one-pixel checkerboard shrunk 3x is mid-grey with antialiasing, and a checkerboard
    again without it."""
    board = ((np.indices((48, 48)).sum(axis=0) % 2) * 255).astype(np.uint8)
    patch = np.repeat(board[None, ..., None], 3, axis=-1)
    got = _spec(input_size=16).preprocess(patch)
    assert abs(float(got.mean()) - 0.5) < 0.02 and float(got.std()) < 0.1
    aliased = F.interpolate(_by_hand(patch), size=(16, 16), mode="bilinear", align_corners=False)
    assert float(aliased.std()) > 0.4


@pytest.mark.parametrize("shape", [(40, 40), (41, 41)])
def test_preprocess_centre_crop(shape):
    patches = np.random.default_rng(3).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    got = _spec(input_size=24, resize_mode="crop").preprocess(patches)
    top = (shape[0] - 24) // 2
    torch.testing.assert_close(got, _by_hand(patches)[:, :, top : top + 24, top : top + 24])
    assert top == 8


def test_crop_larger_than_patch(patches):
    with pytest.raises(PathvizError, match="--input-size 64 is larger than the patches"):
        _spec(input_size=64, resize_mode="crop").preprocess(patches)


# --- activation ----------------------------------------------------------------------------


def test_probabilities():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0]])
    e = np.exp(logits.numpy().astype(np.float64))
    softmax = e / e.sum(axis=1, keepdims=True)
    sigmoid = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    np.testing.assert_allclose(_spec().probabilities(logits).numpy(), softmax, rtol=1e-6)
    np.testing.assert_allclose(
        _spec(activation="softmax").probabilities(logits).numpy(), softmax, rtol=1e-6
    )
    np.testing.assert_allclose(
        _spec(activation="sigmoid").probabilities(logits).numpy(), sigmoid, rtol=1e-6
    )
    torch.testing.assert_close(_spec(activation="none").probabilities(logits), logits)
    one = logits[:, :1]
    np.testing.assert_allclose(_spec().probabilities(one).numpy(), sigmoid[:, :1], rtol=1e-6)
    torch.testing.assert_close(_spec(activation="none").probabilities(one), one)
    # Half-precision logits come back as float32.
    assert _spec().probabilities(logits.half()).dtype == torch.float32


# --- feature layer -------------------------------------------------------------------------


def test_feature_module_default_is_input_of_last_linear(tiny_module, x):
    model = _trained(tiny_module.build(4, 3))
    module, where = ModelSpec(model, "m.pt").feature_module()
    assert module is model.head and where == "input"
    captured = []
    handle = module.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.inference_mode():
        model(x)
        expected = torch.relu(model.hidden(model.features(x)))
    handle.remove()
    torch.testing.assert_close(captured[0], expected)
    demo = build_demo_model()
    assert ModelSpec(demo, "d.pt").feature_module() == (demo.fc, "input")


def test_feature_module_named_layer(tiny_module):
    model = tiny_module.build()
    spec = ModelSpec(model, "m.pt", feature_layer="features.4")
    assert spec.feature_module() == (model.features[4], "output")
    demo = build_demo_model()
    assert ModelSpec(demo, "d.pt", feature_layer="layer3.conv2").feature_module() == (
        demo.layer3.conv2,
        "output",
    )


def test_feature_module_errors(tmp_path):
    demo = build_demo_model()
    with pytest.raises(PathvizError, match="--feature-layer 'layer9' is not a module") as err:
        ModelSpec(demo, "d.pt", feature_layer="layer9").feature_module()
    assert "conv1, bn1, relu, layer1" in str(err.value)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_sequential()), str(path))
    with pytest.raises(PathvizError, match="TorchScript model has no hookable layers"):
        load_model(path, trust_model=True).feature_module()
    no_linear = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(PathvizError, match="no Linear layer; name the feature layer"):
        ModelSpec(no_linear, "c.pt").feature_module()


# --- check_model ---------------------------------------------------------------------------


def test_check_model_counts_outputs(tmp_path):
    assert check_model(ModelSpec(build_demo_model(), "d.pt"), 64) == 3
    assert check_model(ModelSpec(_sequential(), "s.pt"), 24) == 3
    path = tmp_path / "sd.pt"
    torch.save(build_demo_model(n_classes=1).state_dict(), path)
    spec = load_model(path, factory=DEMO_FACTORY, factory_kwargs={"n_classes": 1})
    assert check_model(spec, 32) == 1


def test_check_model_rejects_dense_outputs():
    dense = ModelSpec(nn.Conv2d(3, 2, 1), "segmenter.pt")
    with pytest.raises(PathvizError, match=r"must be \(patches, classes\), found \(2, 2, 16, 16\)"):
        check_model(dense, 16)

    class TwoHeads(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))

    with pytest.raises(PathvizError, match="found tuple"):
        check_model(ModelSpec(TwoHeads(), "heads.pt"), 16)


def test_check_model_names_the_rejected_size():
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    with pytest.raises(PathvizError, match="fixed.pt: the model rejects 48 x 48 inputs") as err:
        check_model(ModelSpec(fixed, "fixed.pt"), 48)
    assert "RuntimeError" in str(err.value) and "\n" not in str(err.value)
    # Resized (or cropped) to the size it takes, it runs.
    assert check_model(ModelSpec(fixed, "fixed.pt", input_size=32), 48) == 2
    assert check_model(ModelSpec(fixed, "fixed.pt", input_size=32, resize_mode="crop"), 48) == 2
    with pytest.raises(PathvizError, match="rejects 40 x 40 inputs"):
        check_model(ModelSpec(fixed, "fixed.pt", input_size=40), 48)
