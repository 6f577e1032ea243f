"""The checkpoint layouts of public MIL heads that pathviz's heads (:mod:`.mil`) load.

The same architecture was saved under different key names over the years: CLAM's code from
2020-04 to 2024-04 appended its Dropout only when training with dropout, so a CLAM_SB trained
without it holds its gated attention at ``attention_net.2``, today's at ``attention_net.3``.
Each known layout is listed here with its key renames, and a checkpoint is recognised only when
its renamed keys are exactly the head's (the tensors' shapes are then checked by
``load_state_dict``). A checkpoint of no known layout is passed on unchanged and refused as any
state dict that does not fit. Parts used in training only are dropped, and said so.

Facts taken from mahmoodlab/CLAM's ``models/model_clam.py`` (history 2020-04-26 to 2024-04-11)
and ``utils/eval_utils.py`` (which drops ``instance_loss_fn`` keys and ``.module``).
Imports nothing heavy: it works on key names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """One known layout: its name (said to the user) and its key renames, (checkpoint prefix,
    ours), the first matching prefix applying."""

    name: str
    renames: tuple[tuple[str, str], ...] = ()

    def rename(self, key: str) -> str:
        for theirs, ours in self.renames:
            if key.startswith(theirs):
                return ours + key[len(theirs) :]
        return key


@dataclass(frozen=True)
class HeadLayouts:
    """The layouts a head loads: ``head`` names the public architecture; ``ignored`` are
    (prefix, why) of the training-only parts dropped; ``wrapped`` are (prefix, unwrapped) of a
    submodule saved inside ``nn.DataParallel`` (its keys gain ``.module``)."""

    head: str
    layouts: tuple[Layout, ...]
    ignored: tuple[tuple[str, str], ...] = ()
    wrapped: tuple[tuple[str, str], ...] = ()


_CLAM_IGNORED = (
    ("instance_classifiers.", "instance_classifiers (instance clustering, used in training only)"),
    ("instance_loss_fn.", "instance_loss_fn (a training loss)"),
)
_CLAM_WRAPPED = (("attention_net.module.", "attention_net."),)  # CLAM 2020's multi-GPU relocate()
_CLAM_AT_3 = Layout(
    "attention_net.3 (CLAM since 2024-04, or trained with dropout before)",
)
_CLAM_AT_2 = Layout(
    "attention_net.2 (CLAM 2020-04 to 2024-04 trained without dropout)",
    (("attention_net.2.", "attention_net.3."),),
)

CLAM_SB = HeadLayouts("CLAM_SB", (_CLAM_AT_3, _CLAM_AT_2), _CLAM_IGNORED, _CLAM_WRAPPED)
# CLAM_MB: the same, with one Linear(hidden, 1) per class in classifiers (classifiers.<c>.*).
# CLAM_MB of 2024-04-06 to 2024-04-11 (one Linear(hidden, n_classes), a bug fixed five days
# later) is not a known layout: its classifiers.weight is refused.
CLAM_MB = HeadLayouts("CLAM_MB", (_CLAM_AT_3, _CLAM_AT_2), _CLAM_IGNORED, _CLAM_WRAPPED)


# ABMIL (Ilse et al. 2018; AMLab-Amsterdam/AttentionDeepMIL model.py): the head part of its
# Attention / GatedAttention, feature_extractor_part2 (Linear + ReLU) onwards, on features; its
# classifier is Linear + Sigmoid (our logit, sigmoid as the activation). A checkpoint holding
# feature_extractor_part1 (the MNIST-bags conv encoder) is not a head's, and is refused.
_ABMIL_COMMON = (("feature_extractor_part2.", "embed."), ("classifier.0.", "classifier."))
ABMIL_GATED = HeadLayouts(
    "ABMIL GatedAttention",
    (
        Layout(
            "attention_V/U/w (AttentionDeepMIL since 2023-06)",
            _ABMIL_COMMON + (
                ("attention_V.0.", "attention.attention_a.0."),
                ("attention_U.0.", "attention.attention_b.0."),
                ("attention_w.", "attention.attention_c."),
            ),
        ),
        Layout(
            "attention_V/U/weights (AttentionDeepMIL 2020-03 to 2023-06)",
            _ABMIL_COMMON + (
                ("attention_V.0.", "attention.attention_a.0."),
                ("attention_U.0.", "attention.attention_b.0."),
                ("attention_weights.", "attention.attention_c."),
            ),
        ),
    ),
)  # fmt: skip
ABMIL = HeadLayouts(
    "ABMIL Attention", (Layout("attention.0/2 (AttentionDeepMIL since 2018)", _ABMIL_COMMON),)
)


# DSMIL (Li et al. 2021; binli123/dsmil-wsi dsmil.py since 2022-09): MILNet(FCLayer,
# BClassifier) on features, its names kept by :class:`.mil.DSMIL`. Its earlier layouts (2020-11
# to 2022-02: q a Linear, v Dropout + Linear without ReLU; 2022-02: a ``lin`` before q) compute
# otherwise and are not known; today's with nonlinear=0 and passing_v has the 2020 key names,
# so DSMIL refuses that combination rather than guess.
DSMIL = HeadLayouts(
    "DSMIL MILNet",
    (Layout("i_classifier.fc.0, b_classifier.q/v/fcc (dsmil-wsi since 2022-09)"),),
)


# TransMIL (Shao et al. 2021; szc19990412/TransMIL models/TransMIL.py, since 2021-10), its names
# kept by :class:`.mil_transmil.TransMIL`. The repository trains it inside a Lightning
# ModelInterface (``self.model``), whose checkpoint's state_dict prefixes every key ``model.``.
TRANSMIL = HeadLayouts(
    "TransMIL",
    (
        Layout("_fc1, layer1/2, pos_layer, _fc2 (szc19990412/TransMIL)"),
        Layout(
            "model._fc1, ... (the state_dict of szc19990412/TransMIL's Lightning checkpoint)",
            (("model.", ""),),
        ),
    ),
)


def recognise(known: HeadLayouts, state: dict, ours: set[str]) -> tuple[dict, str] | None:
    """``state`` renamed to the head's key names ``ours`` and the layout's description, or
    None when no known layout gives exactly those names."""
    dropped = [why for prefix, why in known.ignored if any(k.startswith(prefix) for k in state)]
    kept = {k: v for k, v in state.items() if not any(k.startswith(p) for p, _ in known.ignored)}
    unwrapped = {_unwrap(k, known.wrapped): v for k, v in kept.items()}
    for wrapped, keys in ((False, kept), (True, unwrapped)):
        if wrapped and unwrapped.keys() == kept.keys():
            continue
        for layout in known.layouts:
            renamed = {layout.rename(k): v for k, v in keys.items()}
            # A layout of renames must have renamed something: the head's own names are no
            # public layout (our GatedAttentionMIL's are not ABMIL's).
            used = not layout.renames or renamed.keys() != keys.keys()
            if used and len(renamed) == len(keys) and renamed.keys() == ours:
                said = f"{known.head} checkpoint, layout {layout.name}"
                if wrapped:
                    said += ", saved from nn.DataParallel"
                if dropped:
                    said += "; ignored: " + ", ".join(dropped)
                return renamed, said
    return None


def _unwrap(key: str, wrapped: tuple[tuple[str, str], ...]) -> str:
    for prefix, plain in wrapped:
        if key.startswith(prefix):
            return plain + key[len(prefix) :]
    return key


def adapt_checkpoint(model, state: dict) -> dict:
    """The state dict for ``model`` (built, not loaded): renamed from a known layout when the
    model's class lists its layouts (``checkpoint_layouts``), the layout then said in
    ``model.checkpoint_layout``; else ``state`` unchanged (refused later if it does not fit)."""
    known = getattr(type(model), "checkpoint_layouts", None)
    if not isinstance(known, HeadLayouts):
        return state
    found = recognise(known, state, set(model.state_dict()))
    if found is None:
        return state
    renamed, said = found
    model.checkpoint_layout = said
    return renamed
