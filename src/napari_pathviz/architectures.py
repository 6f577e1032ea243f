"""The architectures a model card may name without the user's consent.

A card is data that travels with downloaded weights: its author, not the user, chose its
factory, and importing a module runs it (``RangeHTTPServer.__main__`` starts a web server when
imported). So a card's factory is looked up here, by its name, before anything is imported. Two
kinds are registered:

- the package's own architectures (:data:`OWN`);
- those installed distributions declare in the entry-point group ``napari_pathviz.architectures``
  (``my_net = "my_lab.models:MyNet"`` in their pyproject.toml), read from their metadata, which
  imports nothing. A distribution whose metadata lies in the working folder is not honoured:
  Python puts that folder on ``sys.path`` (``python -m napari``, a notebook started at a bundle's
  root), so a downloaded bundle could register itself.

A card names a registered architecture by its alias (the entry point's name) or by its exact
``module:attr``. Anything else runs only with the user's consent (:mod:`._model_files`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENTRY_POINT_GROUP = "napari_pathviz.architectures"
OWN_ORIGIN = "napari-pathviz"

# alias -> module:attr, the architectures this package ships (cards in data/, _demo_mil, vit).
OWN = {
    "demo_model": "napari_pathviz._demo_model:build_demo_model",
    "small_conv_encoder": "napari_pathviz.mil:SmallConvEncoder",
    "gated_attention_mil": "napari_pathviz.mil:GatedAttentionMIL",
    "attention_mil": "napari_pathviz.mil:AttentionMIL",
    "clam_sb": "napari_pathviz.mil:ClamSB",
    "clam_mb": "napari_pathviz.mil:ClamMB",
    "dsmil": "napari_pathviz.mil:DSMIL",
    "transmil": "napari_pathviz.mil_transmil:TransMIL",
    "patch_vit": "napari_pathviz.vit:PatchViT",
}


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: ``target`` is its ``module:attr``, ``origin`` who declared
    it (this package, or a distribution)."""

    alias: str
    target: str
    origin: str


def registered() -> dict[str, Architecture]:
    """The registered architectures by alias: the package's own first (a distribution cannot
    take over their names), then each entry point; an alias two distributions declare for
    different targets is left out (neither is the card's evident choice)."""
    found = {alias: Architecture(alias, target, OWN_ORIGIN) for alias, target in OWN.items()}
    declared: dict[str, set[Architecture]] = {}
    for entry in _entry_points():
        declared.setdefault(entry.alias, set()).add(entry)
    for alias, entries in declared.items():
        if alias not in found and len({e.target for e in entries}) == 1:
            found[alias] = min(entries, key=lambda e: e.origin)
    return found


def resolve(name: str) -> Architecture | None:
    """The registered architecture ``name`` stands for (an alias or an exact ``module:attr``),
    or None. Imports nothing."""
    known = registered()
    if name in known:
        return known[name]
    return next((a for a in known.values() if a.target == name), None)


def unregistered_hint(name: str) -> str:
    """Why ``name`` is not registered when a distribution in the working folder declares it
    (which is not honoured), else ''."""
    for entry in _entry_points(include_working_folder=True):
        if name in (entry.alias, entry.target) and _in_working_folder(entry.origin_path):
            return (
                f" ({entry.origin} declares it, but from the working folder "
                f"{entry.origin_path}, which is not honoured: install it)"
            )
    return ""


@dataclass(frozen=True)
class _Entry(Architecture):
    origin_path: str = ""


def _entry_points(include_working_folder: bool = False) -> list[_Entry]:
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            module, attr = ep.module, ep.attr
        except AttributeError:  # a value that is not module:attr; another package's mistake
            continue
        if not attr:  # a module alone is not a factory
            continue
        dist = getattr(ep, "dist", None)
        where = str(dist.locate_file("")) if dist is not None else ""
        if not include_working_folder and _in_working_folder(where):
            continue
        name = (dist.metadata["Name"] if dist is not None else None) or "an unnamed package"
        out.append(_Entry(ep.name, f"{module}:{attr}", name, where))
    return out


def _in_working_folder(where: str) -> bool:
    """Whether a distribution's sys.path entry is the working folder (or '')."""
    if not where or where == ".":
        return True
    try:
        return Path(where).resolve() == Path(os.getcwd()).resolve()
    except OSError:
        return True
