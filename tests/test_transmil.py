"""TransMIL checkpoints load into the registered head ``transmil`` and give TransMIL's own
logits: a reference written here from the published structure and forward (Shao et al. 2021;
szc19990412/TransMIL models/TransMIL.py: _fc1, a class token, layer1 / PPEG / layer2 with the
nystrom_attention package's NystromAttention, norm, _fc2; the bag squared by repeating its first
tokens), random weights with a fixed seed, eval mode. Small sizes (32 -> 64, 32 landmarks) keep
the tests fast; one test runs the published sizes (1024 -> 512, 256 landmarks)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.model_card import read_card
from napari_pathviz.slide_head import load_head
from napari_pathviz.slide_level import slide_outputs

nystrom_attention = pytest.importorskip("nystrom_attention")

IN_DIM, DIM, N_CLASSES = 32, 64, 3


class RefTransLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nystrom_attention.NystromAttention(
            dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2, pinv_iterations=6,
            residual=True, dropout=0.1,
        )  # fmt: skip

    def forward(self, x):
        return x + self.attn(self.norm(x))


class RefPPEG(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, height, width):
        batch, _, channels = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).view(batch, channels, height, width)
        y = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        return torch.cat((cls_token.unsqueeze(1), y.flatten(2).transpose(1, 2)), dim=1)


class RefTransMIL(nn.Module):
    """TransMIL as published (its forward takes ``data=`` (B, n, in_dim), returns a dict);
    published: in_dim 1024, dim 512."""

    def __init__(self, n_classes=N_CLASSES, in_dim=IN_DIM, dim=DIM):
        super().__init__()
        self.pos_layer = RefPPEG(dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.n_classes = n_classes
        self.layer1 = RefTransLayer(dim)
        self.layer2 = RefTransLayer(dim)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, n_classes)

    def forward(self, **kwargs):
        h = self._fc1(kwargs["data"].float())
        n = h.shape[1]
        side = int(np.ceil(np.sqrt(n)))
        h = torch.cat([h, h[:, : side * side - n, :]], dim=1)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h = self.layer2(self.pos_layer(self.layer1(h), side, side))
        logits = self._fc2(self.norm(h)[:, 0])
        return {"logits": logits, "Y_prob": torch.softmax(logits, dim=1)}


class LightningLike(nn.Module):
    """The repository's ModelInterface holds the net as ``self.model``: its checkpoint's
    state_dict keys are ``model.<TransMIL's>``."""

    def __init__(self, net):
        super().__init__()
        self.model = net


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(11)
    return RefTransMIL().eval()


def _card(folder, weights: str, n_classes=N_CLASSES, in_dim=IN_DIM, dim=DIM):
    card = folder / "transmil.json"
    card.write_text(
        json.dumps(
            {
                "encoder": {"factory": "napari_pathviz.mil:SmallConvEncoder", "weights": "none.st"},
                "head": {
                    "factory": "transmil",
                    "weights": weights,
                    "class_names": ["a", "b", "c"][:n_classes],
                    "factory_kwargs": {"in_dim": in_dim, "n_classes": n_classes, "dim": dim},
                },
            }
        )  # fmt: skip
    )
    return card


def _bag(n, seed=0, in_dim=IN_DIM):
    return np.random.default_rng(seed).normal(size=(n, in_dim)).astype(np.float32)


def _max_difference(model, reference, sizes) -> float:
    worst = 0.0
    for n in sizes:
        bag = _bag(n, seed=n)
        out = slide_outputs(model, bag)
        with torch.no_grad():
            expected = reference(data=torch.from_numpy(bag)[None])["logits"][0]
        worst = max(worst, float(np.abs(out.logits - expected.double().numpy()).max()))
        np.testing.assert_allclose(out.logits, expected, atol=1e-5, err_msg=f"bag of {n}")
        np.testing.assert_allclose(out.probabilities, torch.softmax(expected, 0), atol=1e-6)
    return worst


# Square and not, one patch, and more tokens than the 32 landmarks (Nystrom then averages
# groups of tokens into each landmark).
SIZES = [1, 2, 9, 10, 37, 64, 150]


@pytest.mark.parametrize("lightning", [False, True], ids=["state_dict", "lightning model."])
def test_transmil_checkpoints_give_transmils_logits(reference, lightning, tmp_path):
    state = (LightningLike(reference) if lightning else reference).state_dict()
    torch.save(state, tmp_path / "transmil.pt")
    model = load_head(read_card(_card(tmp_path, "transmil.pt")))
    assert model.head_layout.startswith("TransMIL checkpoint, layout ")
    assert ("Lightning" in model.head_layout) == lightning
    assert model.class_names == ("a", "b", "c") and not model.head.training
    worst = _max_difference(model, reference, SIZES)
    print(f"TransMIL max |logit difference| over bags of {SIZES}: {worst:.2e}")
    # A batch of bags gives the reference's batch (whose pseudo-inverse scale is the batch's).
    bags = torch.from_numpy(np.stack([_bag(10, 1), _bag(10, 2), _bag(10, 3) * 0.5]))
    with torch.no_grad():
        np.testing.assert_allclose(model.head(bags), reference(data=bags)["logits"], atol=1e-5)


def test_transmil_at_its_published_sizes(tmp_path):
    """1024 -> 512, 256 landmarks, as TransMIL's code fixes them; the bags square and not,
    one of more tokens than landmarks. Logits only (gradients at this size are slow on CPU)."""
    torch.manual_seed(13)
    reference = RefTransMIL(2, 1024, 512).eval()
    torch.save(reference.state_dict(), tmp_path / "transmil.pt")
    model = load_head(read_card(_card(tmp_path, "transmil.pt", 2, 1024, 512)))
    for n in (16, 300):
        bag = torch.from_numpy(_bag(n, seed=n, in_dim=1024))
        with torch.no_grad():
            got, expected = model.head(bag), reference(data=bag[None])["logits"][0]
        print(f"TransMIL 1024/512, bag of {n}: max |difference| {(got - expected).abs().max():.2e}")
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_transmil_gives_gradient_x_feature_and_no_attention(reference, tmp_path):
    """No exact per-patch attention exists (module docstring of mil_transmil): the columns are
    gradient x feature, each equal to the reference's own gradient times the feature."""
    torch.save(reference.state_dict(), tmp_path / "transmil.pt")
    model = load_head(read_card(_card(tmp_path, "transmil.pt")))
    bag = _bag(10, seed=4)
    out = slide_outputs(model, bag)
    assert out.attention is None and out.contributions is None and out.patch_logits is None
    assert list(out.columns().columns) == ["gradxfeat_a", "gradxfeat_b", "gradxfeat_c"]
    h = torch.from_numpy(bag).requires_grad_(True)
    logits = reference(data=h[None])["logits"][0]
    for k in range(N_CLASSES):
        (grad,) = torch.autograd.grad(logits[k], h, retain_graph=True)
        np.testing.assert_allclose(out.grad_x_feature[:, k], (grad * h).sum(1).detach(), atol=1e-5)


def _write_features(path, bag):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=bag)
        xy = np.stack([np.arange(len(bag)) * 256, np.zeros(len(bag))], axis=1).astype(np.int64)
        f.create_dataset("coords", data=xy).attrs.update({"patch_size": 256})
    return path


def test_pathviz_extract_features_with_a_transmil_card(reference, tmp_path, capsys):
    torch.save(LightningLike(reference).state_dict(), tmp_path / "transmil.pt")
    card = _card(tmp_path, "transmil.pt")
    bag = _bag(23, seed=5)
    h5 = _write_features(tmp_path / "slide1.h5", bag)
    out = tmp_path / "slide1.csv"
    assert main(["extract", "-m", str(card), "--features", str(h5), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("head weights: "))
    assert "TransMIL checkpoint, layout model._fc1" in line
    record = json.loads((tmp_path / "slide1.slide.json").read_text())
    with torch.no_grad():
        logits = reference(data=torch.from_numpy(bag)[None])["logits"][0]
    assert list(record["logits"].values()) == pytest.approx(logits.tolist(), abs=1e-5)
    assert record["prediction"] == "abc"[int(logits.argmax())]
    table = pd.read_csv(out)
    assert len(table) == 23 and "attention" not in table.columns
    assert {"gradxfeat_a", "gradxfeat_b", "gradxfeat_c"} <= set(table.columns)


def _unfit_checkpoints(reference) -> dict[str, tuple[dict, str]]:
    """(state dict, what the one-line refusal names): another class count, and a fork's
    renamed key (fc1 for _fc1) that no known layout gives."""
    torch.manual_seed(12)
    two_classes = RefTransMIL(n_classes=2).eval().state_dict()
    renamed = {k.replace("_fc1.", "fc1."): v for k, v in reference.state_dict().items()}
    return {
        "classes": (two_classes, "tensors of other shapes: _fc2.weight, _fc2.bias"),
        "renamed": (renamed, "missing keys _fc1.0.weight, _fc1.0.bias; unexpected keys fc1.0"),
    }


@pytest.mark.parametrize("case", ["classes", "renamed"])
def test_a_transmil_checkpoint_that_does_not_fit_is_refused_in_one_line(
    reference, case, tmp_path, capsys
):
    state, named = _unfit_checkpoints(reference)[case]
    torch.save(state, tmp_path / "odd.pt")
    card = _card(tmp_path, "odd.pt")
    with pytest.raises(PathvizError) as err:
        load_head(read_card(card))
    message = str(err.value)
    assert "\n" not in message and "odd.pt: the state dict does not fit" in message, message
    assert "mil_transmil:TransMIL" in message and named in message, message
    h5 = _write_features(tmp_path / "slide1.h5", _bag(5))
    out = tmp_path / "slide1.csv"
    assert main(["extract", "-m", str(card), "--features", str(h5), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not fit" in lines[0], lines
    assert not out.exists() and not (tmp_path / "slide1.slide.json").exists()


def test_pixels_to_slide_is_refused_for_transmil_in_one_line(reference, tmp_path):
    """Pixels to slide picks the most attended patches; TransMIL has no attention to pick by."""
    from napari_pathviz.slide_level import explain_bag

    torch.save(reference.state_dict(), tmp_path / "transmil.pt")
    model = load_head(read_card(_card(tmp_path, "transmil.pt")))
    bag = _bag(6, seed=6)
    prediction = slide_outputs(model, bag)
    read = []
    with pytest.raises(PathvizError, match="has no attention to pick the top patches by") as err:
        explain_bag(model, torch.from_numpy(bag), prediction, read.append)
    assert "\n" not in str(err.value) and read == []  # no patch was read
