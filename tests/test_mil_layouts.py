"""CLAM checkpoints of every known layout load into ClamSB / ClamMB and give CLAM's own slide
output: a reference written here with CLAM's module layout, key names and forward (Lu et al.
2021; mahmoodlab/CLAM models/model_clam.py, 2020-04 to today) is saved in each layout from the
same weights; pathviz's loaded head gives its logits and attention, the layout it recognised is
said, and a layout it does not know is refused in one line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.mil import ClamMB
from napari_pathviz.model_card import read_card
from napari_pathviz.slide_head import load_head
from napari_pathviz.slide_level import slide_outputs

IN_DIM, HIDDEN, ATTENTION_DIM, N_CLASSES = 12, 10, 6, 3


class _Gated(nn.Module):
    """CLAM's Attn_Net_Gated: attention_a (Linear, Tanh), attention_b (Linear, Sigmoid),
    attention_c (Linear to one score per branch); returns (scores N x K, its input)."""

    def __init__(self, branches: int):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(HIDDEN, ATTENTION_DIM), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(HIDDEN, ATTENTION_DIM), nn.Sigmoid())
        self.attention_c = nn.Linear(ATTENTION_DIM, branches)

    def forward(self, x):
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x))), x


class ClamReference(nn.Module):
    """CLAM_SB / CLAM_MB as CLAM builds them: ``attention_net`` = [Linear, ReLU] + a Dropout
    (always since 2024-04; before, only when trained with dropout) + the gated attention,
    optionally inside nn.DataParallel (CLAM 2020's multi-GPU training); ``classifiers`` one
    Linear (SB) or one Linear to 1 per class (MB); ``instance_classifiers`` for training."""

    def __init__(self, multi_branch: bool, dropout_layer: bool, data_parallel: bool = False):
        super().__init__()
        self.multi_branch = multi_branch
        fc = [nn.Linear(IN_DIM, HIDDEN), nn.ReLU()] + ([nn.Dropout(0.25)] if dropout_layer else [])
        net = nn.Sequential(*fc, _Gated(N_CLASSES if multi_branch else 1))
        self.attention_net = nn.DataParallel(net) if data_parallel else net
        self.classifiers = (
            nn.ModuleList(nn.Linear(HIDDEN, 1) for _ in range(N_CLASSES))
            if multi_branch
            else nn.Linear(HIDDEN, N_CLASSES)
        )
        self.instance_classifiers = nn.ModuleList(nn.Linear(HIDDEN, 2) for _ in range(N_CLASSES))

    def forward(self, h):
        """CLAM's forward at inference: (logits 1 x classes, softmaxed attention K x N)."""
        scores, h = self.attention_net(h)  # N x K
        attention = torch.softmax(scores.transpose(1, 0), dim=1)  # K x N, softmax over N
        pooled = attention @ h  # K x hidden
        if not self.multi_branch:
            return self.classifiers(pooled), attention
        logits = torch.stack([self.classifiers[c](pooled[c]) for c in range(N_CLASSES)], dim=1)
        return logits, attention


LAYOUTS = {  # name: (dropout layer, nn.DataParallel, keep instance_classifiers, what is said)
    "today": (True, False, True, "layout attention_net.3"),
    "2020-2024 without dropout": (False, False, True, "layout attention_net.2"),
    "2020-2024 with dropout": (True, False, True, "layout attention_net.3"),
    "2020 multi-GPU, no dropout": (False, True, True, "saved from nn.DataParallel"),
    "instance_classifiers stripped": (False, False, False, "layout attention_net.2"),
}


def _reference(multi_branch: bool, layout: str) -> ClamReference:
    """The reference in ``layout``, with the same weights whatever the layout (parameters in
    the same order under other names)."""
    dropout_layer, data_parallel, _, _ = LAYOUTS[layout]
    torch.manual_seed(7)
    source = ClamReference(multi_branch, dropout_layer=True)
    ref = ClamReference(multi_branch, dropout_layer, data_parallel)
    with torch.no_grad():
        for theirs, ours in zip(source.parameters(), ref.parameters(), strict=True):
            ours.copy_(theirs)
    return ref.eval()


def _checkpoint(ref: ClamReference, layout: str, path) -> dict:
    """The reference's state dict as CLAM saves it (torch.save), less instance_classifiers
    where the layout strips them."""
    state = ref.state_dict()
    if not LAYOUTS[layout][2]:
        state = {k: v for k, v in state.items() if not k.startswith("instance_classifiers.")}
    torch.save(state, path)
    return state


def _card(folder, weights: str, factory: str):
    card = folder / "card.json"
    card.write_text(
        json.dumps(
            {
                "encoder": {"factory": "napari_pathviz.mil:SmallConvEncoder", "weights": "none.st"},
                "head": {
                    "factory": factory,
                    "weights": weights,
                    "class_names": ["a", "b", "c"],
                    "factory_kwargs": {
                        "in_dim": IN_DIM,
                        "hidden": HIDDEN,
                        "attention_dim": ATTENTION_DIM,
                        "n_classes": N_CLASSES,
                    },
                },
            }
        )  # fmt: skip
    )
    return card


@pytest.fixture(scope="module")
def bag():
    return np.random.default_rng(3).normal(size=(9, IN_DIM)).astype(np.float32)


@pytest.mark.parametrize("multi_branch", [False, True], ids=["CLAM_SB", "CLAM_MB"])
def test_every_known_clam_layout_gives_clams_slide_output(multi_branch, bag, tmp_path):
    factory = "clam_mb" if multi_branch else "clam_sb"  # the registered aliases
    outputs = {}
    for k, layout in enumerate(LAYOUTS):
        ref = _reference(multi_branch, layout)
        _checkpoint(ref, layout, tmp_path / f"s_{k}_checkpoint.pt")
        model = load_head(read_card(_card(tmp_path, f"s_{k}_checkpoint.pt", factory)))
        ours = slide_outputs(model, bag)
        with torch.no_grad():
            logits, attention = ref(torch.from_numpy(bag))
        np.testing.assert_allclose(ours.logits, logits[0].numpy(), atol=1e-5, err_msg=layout)
        predicted = int(np.argmax(ours.logits))
        # The attention shown is CLAM's A (the predicted class's branch for CLAM_MB).
        np.testing.assert_allclose(
            ours.attention, attention[predicted if multi_branch else 0], atol=1e-6
        )
        if multi_branch:
            np.testing.assert_allclose(ours.class_attention, attention.T.numpy(), atol=1e-6)
            assert {f"attention_{c}" for c in "abc"} <= set(ours.columns().columns)
        # Contributions add up to the slide logit, class by class.
        np.testing.assert_allclose(ours.contributions.sum(axis=0), ours.logits, atol=1e-5)
        said = model.head_layout
        assert said.startswith(f"CLAM_{'MB' if multi_branch else 'SB'} checkpoint"), said
        assert LAYOUTS[layout][3] in said, (layout, said)
        assert ("ignored: instance_classifiers" in said) == LAYOUTS[layout][2], said
        outputs[layout] = (ours.logits, ours.attention)
    # Same weights, any layout: the same slide output.
    first = outputs["today"]
    for layout, (logits, attention) in outputs.items():
        np.testing.assert_array_equal(logits, first[0], err_msg=layout)
        np.testing.assert_array_equal(attention, first[1], err_msg=layout)


def _write_features(path, bag):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=bag)
        xy = np.stack([np.arange(len(bag)) * 256, np.zeros(len(bag))], axis=1).astype(np.int64)
        f.create_dataset("coords", data=xy).attrs.update({"patch_size": 256})
    return path


def test_the_cli_says_which_layout_it_recognised(bag, tmp_path, capsys):
    layout = "2020-2024 without dropout"
    ref = _reference(False, layout)
    _checkpoint(ref, layout, tmp_path / "s_0_checkpoint.pt")
    card = _card(tmp_path, "s_0_checkpoint.pt", "napari_pathviz.mil:ClamSB")
    h5 = _write_features(tmp_path / "slide1.h5", bag)
    out = tmp_path / "slide1.csv"
    assert main(["extract", "-m", str(card), "--features", str(h5), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("head weights: "))
    assert "CLAM_SB checkpoint, layout attention_net.2 (CLAM 2020-04 to 2024-04" in line
    assert "ignored: instance_classifiers (instance clustering, used in training only)" in line
    record = json.loads((tmp_path / "slide1.slide.json").read_text())
    assert record["head_layout"] == line.removeprefix("head weights: ")
    with torch.no_grad():
        logits, attention = ref(torch.from_numpy(bag))
    assert list(record["logits"].values()) == pytest.approx(logits[0].tolist(), abs=1e-5)
    import pandas as pd

    np.testing.assert_allclose(pd.read_csv(out)["attention"], attention[0], atol=1e-6)


def _unknown_layouts() -> dict[str, dict]:
    """State dicts of no known layout, each from a real CLAM_SB / CLAM_MB reference."""
    sb = _reference(False, "today").state_dict()
    mb = _reference(True, "today").state_dict()
    shifted = {k.replace("attention_net.3.", "attention_net.4."): v for k, v in sb.items()}
    # CLAM_MB of 2024-04-06..11: one Linear(hidden, classes) as classifiers, fixed days later.
    buggy_mb = {k: v for k, v in mb.items() if not k.startswith("classifiers.")}
    buggy_mb["classifiers.weight"] = torch.zeros(N_CLASSES, HIDDEN)
    buggy_mb["classifiers.bias"] = torch.zeros(N_CLASSES)
    return {"clam_sb": shifted, "clam_mb": buggy_mb}


@pytest.mark.parametrize("factory", ["clam_sb", "clam_mb"])
def test_an_unknown_layout_is_refused_in_one_line(factory, bag, tmp_path, capsys):
    torch.save(_unknown_layouts()[factory], tmp_path / "odd.pt")
    card = _card(tmp_path, "odd.pt", factory)
    with pytest.raises(PathvizError) as err:
        load_head(read_card(card))
    assert "\n" not in str(err.value)
    assert "odd.pt: the state dict does not fit napari_pathviz.mil:Clam" in str(err.value)
    h5 = _write_features(tmp_path / "slide1.h5", bag)
    out = tmp_path / "slide1.csv"
    assert main(["extract", "-m", str(card), "--features", str(h5), "-o", str(out)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "does not fit" in err_lines[0], err_lines
    assert not out.exists() and not (tmp_path / "slide1.slide.json").exists()


def test_a_clam_layout_with_shapes_of_another_size_is_refused(tmp_path):
    """Recognised by its keys, but the card says another hidden size: refused, not renamed
    into a model it does not fit."""
    ref = _reference(False, "2020-2024 without dropout")
    torch.save(ref.state_dict(), tmp_path / "ckpt.pt")
    card = json.loads(_card(tmp_path, "ckpt.pt", "clam_sb").read_text())
    card["head"]["factory_kwargs"]["hidden"] = HIDDEN + 2
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(PathvizError, match=r"does not fit .*tensors of other shapes"):
        load_head(read_card(tmp_path / "card.json"))


def test_clam_mb_arithmetic_class_by_class():
    """Per class, attention x patch logit adds up to the slide logit; attend() is the
    predicted class's branch; the one-row replacement equals the head on the edited bag."""
    torch.manual_seed(0)
    head = ClamMB(IN_DIM, HIDDEN, ATTENTION_DIM, N_CLASSES, 0.25).eval()
    bags = torch.randn(4, 9, IN_DIM)
    per_class, _ = head.class_attention(bags)  # (4, classes, 9)
    assert torch.allclose(per_class.sum(-1), torch.ones(4, N_CLASSES), atol=1e-6)
    contributions = per_class.transpose(-1, -2) * head.patch_logits(bags)
    assert torch.allclose(contributions.sum(-2), head(bags), atol=1e-5)
    predicted = head(bags).argmax(-1)
    chosen = per_class[torch.arange(4), predicted]
    assert torch.equal(head.attend(bags)[0], chosen)
    assert torch.allclose(head(bags[1]), head(bags)[1], atol=1e-6)
    replaced = torch.randn(5, IN_DIM)
    edited = bags[0].expand(5, 9, IN_DIM).clone()
    edited[:, 4] = replaced
    assert torch.allclose(head.replacing_one(bags[0], 4)(replaced), head(edited), atol=1e-5)


class AbmilReference(nn.Module):
    """ABMIL's Attention / GatedAttention (Ilse et al. 2018; AMLab-Amsterdam/AttentionDeepMIL
    model.py) from feature_extractor_part2 on, as its code names and runs it: H =
    part2(features); A = softmax over the patches of attention(H) (gated: attention_w or, before
    2023-06, attention_weights of attention_V(H) * attention_U(H)); Y_prob = classifier(A H)."""

    def __init__(self, gated: bool, old_name: bool = False, m: int = HIDDEN, l_: int = 5):
        super().__init__()
        self.gated, self.old_name = gated, old_name
        self.feature_extractor_part2 = nn.Sequential(nn.Linear(IN_DIM, m), nn.ReLU())
        if gated:
            self.attention_V = nn.Sequential(nn.Linear(m, l_), nn.Tanh())
            self.attention_U = nn.Sequential(nn.Linear(m, l_), nn.Sigmoid())
            setattr(self, "attention_weights" if old_name else "attention_w", nn.Linear(l_, 1))
        else:
            self.attention = nn.Sequential(nn.Linear(m, l_), nn.Tanh(), nn.Linear(l_, 1))
        self.classifier = nn.Sequential(nn.Linear(m, 1), nn.Sigmoid())

    def forward(self, features):
        h = self.feature_extractor_part2(features)  # K x M
        if self.gated:
            w = self.attention_weights if self.old_name else self.attention_w
            a = w(self.attention_V(h) * self.attention_U(h))
        else:
            a = self.attention(h)
        a = torch.softmax(a.transpose(1, 0), dim=1)  # 1 x K, softmax over K
        return self.classifier(a @ h), a  # Y_prob (1 x 1), A


def _abmil_card(folder, weights: str, factory: str):
    card = folder / "abmil.json"
    kwargs = {"in_dim": IN_DIM, "hidden": HIDDEN, "attention_dim": 5, "n_classes": 1}
    card.write_text(
        json.dumps(
            {
                "encoder": {"factory": "napari_pathviz.mil:SmallConvEncoder", "weights": "none.st"},
                "head": {
                    "factory": factory,
                    "weights": weights,
                    "class_names": ["tumour"],
                    "factory_kwargs": kwargs,
                },
            }
        )  # fmt: skip
    )
    return card


@pytest.mark.parametrize(
    "gated, old_name, factory, said",
    [
        (True, False, "gated_attention_mil", "ABMIL GatedAttention checkpoint, layout attention_V/U/w"),
        (True, True, "gated_attention_mil", "layout attention_V/U/weights (AttentionDeepMIL 2020-03"),
        (False, False, "attention_mil", "ABMIL Attention checkpoint, layout attention.0/2"),
    ],
    ids=["gated", "gated before 2023-06", "attention"],
)  # fmt: skip
def test_abmil_checkpoints_give_abmils_output(gated, old_name, factory, said, bag, tmp_path):
    torch.manual_seed(11)
    source = AbmilReference(gated)
    ref = AbmilReference(gated, old_name)
    with torch.no_grad():
        for theirs, ours in zip(source.parameters(), ref.parameters(), strict=True):
            ours.copy_(theirs)
    torch.save(ref.eval().state_dict(), tmp_path / "abmil.pt")
    model = load_head(read_card(_abmil_card(tmp_path, "abmil.pt", factory)))
    assert model.head_layout.startswith("ABMIL") and said in model.head_layout
    out = slide_outputs(model, bag)
    with torch.no_grad():
        y_prob, attention = ref(torch.from_numpy(bag))
    # ABMIL's Y_prob is the sigmoid of our logit (the card's activation, auto for one output).
    assert out.probabilities[0] == pytest.approx(float(y_prob), abs=1e-6)
    np.testing.assert_allclose(out.attention, attention[0], atol=1e-6)
    np.testing.assert_allclose(out.contributions.sum(axis=0), out.logits, atol=1e-5)


def test_an_abmil_checkpoint_with_its_image_encoder_is_refused(tmp_path):
    """AttentionDeepMIL's MNIST-bags model holds feature_extractor_part1 (a conv encoder on
    28 x 28 images): not a head on features, so no known layout, refused in one line."""
    state = AbmilReference(True).state_dict()
    state["feature_extractor_part1.0.weight"] = torch.zeros(20, 1, 5, 5)
    state["feature_extractor_part1.0.bias"] = torch.zeros(20)
    torch.save(state, tmp_path / "mnist_bags.pt")
    with pytest.raises(PathvizError) as err:
        load_head(read_card(_abmil_card(tmp_path, "mnist_bags.pt", "gated_attention_mil")))
    message = str(err.value)
    assert "\n" not in message and "does not fit napari_pathviz.mil:GatedAttentionMIL" in message
    assert "missing keys embed.0.weight" in message and "unexpected keys" in message


def test_our_own_gated_attention_head_is_no_public_layout(tmp_path):
    """The demo's GatedAttentionMIL weights load as they are, with no layout said."""
    from napari_pathviz.mil import GatedAttentionMIL

    torch.save(GatedAttentionMIL(IN_DIM, HIDDEN, 1, 5).state_dict(), tmp_path / "own.pt")
    model = load_head(read_card(_abmil_card(tmp_path, "own.pt", "gated_attention_mil")))
    assert model.head_layout is None


class DsmilReference(nn.Module):
    """DSMIL's MILNet on features (Li et al. 2021; binli123/dsmil-wsi dsmil.py since 2022-09)
    as its code names and runs it: instance scores c = i_classifier.fc(feats); per class the
    critical instance (first after a descending sort of c along the instances); A = softmax
    along the instances of Q q_max^T / sqrt(128); B = A^T V; bag prediction = fcc (a Conv1d
    over the classes) of B viewed as 1 x C x V."""

    def __init__(self, passing_v: bool):
        super().__init__()
        self.i_classifier = nn.Module()
        self.i_classifier.fc = nn.Sequential(nn.Linear(IN_DIM, N_CLASSES))
        self.b_classifier = nn.Module()
        self.b_classifier.q = nn.Sequential(
            nn.Linear(IN_DIM, 128), nn.ReLU(), nn.Linear(128, 128), nn.Tanh()
        )
        self.b_classifier.v = (
            nn.Sequential(nn.Dropout(0.0), nn.Linear(IN_DIM, IN_DIM), nn.ReLU())
            if passing_v
            else nn.Identity()
        )
        self.b_classifier.fcc = nn.Conv1d(N_CLASSES, N_CLASSES, kernel_size=IN_DIM)

    def forward(self, feats):
        b = self.b_classifier
        c = self.i_classifier.fc(feats)  # N x C
        v, q = b.v(feats), b.q(feats)  # N x V, N x 128
        _, m_indices = torch.sort(c, 0, descending=True)
        q_max = b.q(torch.index_select(feats, 0, m_indices[0, :]))  # C x 128
        a = torch.softmax(q @ q_max.T / torch.sqrt(torch.tensor(128.0)), 0)  # N x C
        bag = (a.T @ v).view(1, N_CLASSES, -1)  # 1 x C x V
        return b.fcc(bag).view(1, -1), a


def _dsmil_card(folder, weights: str, **kwargs):
    card = folder / "dsmil.json"
    card.write_text(
        json.dumps(
            {
                "encoder": {"factory": "napari_pathviz.mil:SmallConvEncoder", "weights": "none.st"},
                "head": {
                    "factory": "dsmil",
                    "weights": weights,
                    "class_names": ["a", "b", "c"],
                    "activation": "sigmoid",
                    "factory_kwargs": {"in_dim": IN_DIM, "n_classes": N_CLASSES, **kwargs},
                },
            }
        )  # fmt: skip
    )
    return card


@pytest.mark.parametrize("passing_v", [False, True], ids=["v identity", "passing_v"])
def test_dsmil_checkpoints_give_dsmils_bag_prediction(passing_v, bag, tmp_path):
    torch.manual_seed(5)
    ref = DsmilReference(passing_v).eval()
    torch.save(ref.state_dict(), tmp_path / "mil_weights_fold_0.pth")
    card = _dsmil_card(tmp_path, "mil_weights_fold_0.pth", passing_v=passing_v)
    model = load_head(read_card(card))
    assert model.head_layout.startswith("DSMIL MILNet checkpoint, layout i_classifier.fc.0")
    out = slide_outputs(model, bag)
    with torch.no_grad():
        logits, attention = ref(torch.from_numpy(bag))
    np.testing.assert_allclose(out.logits, logits[0], atol=1e-5)
    # DSMIL's prediction is the sigmoid of the bag prediction, class by class.
    np.testing.assert_allclose(out.probabilities, torch.sigmoid(logits[0]), atol=1e-6)
    np.testing.assert_allclose(out.class_attention, attention, atol=1e-6)
    np.testing.assert_allclose(out.attention, attention[:, int(np.argmax(out.logits))], atol=1e-6)
    # Each patch's share of each logit adds up to it.
    np.testing.assert_allclose(out.contributions.sum(axis=0), out.logits, atol=1e-5)
    assert {"contribution_a", "attention_c"} <= set(out.columns().columns)
    # A batch of bags (what pixels-to-slide feeds the head) gives each bag's logits.
    bags = torch.from_numpy(np.stack([bag, bag[::-1].copy(), bag * 0.5]))
    with torch.no_grad():
        batched = model.head(bags)
        for k in range(3):
            np.testing.assert_allclose(batched[k], ref(bags[k])[0][0], atol=1e-5)


def test_dsmil_layouts_it_does_not_know_are_refused_in_one_line(tmp_path):
    """DSMIL 2020-11..2022-02 (q a Linear, v Dropout + Linear): refused, not loaded into
    today's computation; nonlinear=0 with passing_v (the same key names) refused when built."""
    old = {
        "i_classifier.fc.0.weight": torch.zeros(N_CLASSES, IN_DIM),
        "i_classifier.fc.0.bias": torch.zeros(N_CLASSES),
        "b_classifier.q.weight": torch.zeros(128, IN_DIM),
        "b_classifier.q.bias": torch.zeros(128),
        "b_classifier.v.1.weight": torch.zeros(IN_DIM, IN_DIM),
        "b_classifier.v.1.bias": torch.zeros(IN_DIM),
        "b_classifier.fcc.weight": torch.zeros(N_CLASSES, N_CLASSES, IN_DIM),
        "b_classifier.fcc.bias": torch.zeros(N_CLASSES),
    }
    torch.save(old, tmp_path / "dsmil_2020.pth")
    with pytest.raises(PathvizError) as err:
        load_head(read_card(_dsmil_card(tmp_path, "dsmil_2020.pth", passing_v=True)))
    assert "\n" not in str(err.value)
    assert "does not fit napari_pathviz.mil:DSMIL: missing keys b_classifier.q.0.weight" in str(
        err.value
    )
    card = _dsmil_card(tmp_path, "dsmil_2020.pth", nonlinear=False, passing_v=True)
    with pytest.raises(PathvizError) as err:
        load_head(read_card(card))
    assert "\n" not in str(err.value) and "DSMIL's 2020 layout" in str(err.value)
