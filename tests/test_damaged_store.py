"""A damaged or foreign results store is refused in one line naming it (issue 18, item 10): a
corrupt ``done/zarr.json`` (a crash, a full disk) and an array of pickled objects, whether the
store is resumed, reused by another job, or opened to show its maps; nothing in it is changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import zoo
from napari_pathviz.attribution.stored import explain, open_attributions
from napari_pathviz.errors import PathvizError


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished_store(tmp_path):
    """A real attributions store: the tiny CNN's Grad-CAM maps of 8 inputs, in chunks of 4."""
    model, x = zoo.plain_maxpool_cnn(), zoo.inputs(8)
    store = tmp_path / "maps.zarr"
    explain(model, x, "gradcam", store=store, chunk_size=4)
    open_attributions(store)  # finished and readable before it is damaged
    return model, x, store


def _cut_done_metadata(store: Path) -> None:
    done = store / "done" / "zarr.json"
    done.write_text(done.read_text()[:25])


def _pickled_maps(store: Path) -> None:
    """``maps`` turned into a zarr v2 object array (read back by unpickling its chunks)."""
    meta = json.loads((store / "maps" / "zarr.json").read_text())
    (store / "maps" / "zarr.json").unlink()
    zarray = {"zarr_format": 2, "shape": meta["shape"], "chunks": [4, *meta["shape"][1:]],
              "dtype": "|O", "order": "C", "compressor": None, "fill_value": None,
              "filters": [{"id": "pickle"}]}  # fmt: skip
    (store / "maps" / ".zarray").write_text(json.dumps(zarray))


def _type_changed_to_object(store: Path) -> None:
    meta = json.loads((store / "done" / "zarr.json").read_text())
    meta["data_type"] = "object"
    (store / "done" / "zarr.json").write_text(json.dumps(meta))


DAMAGE = {
    "cut-json": (_cut_done_metadata, "damaged store: done/zarr.json is unreadable"),
    "pickled": (_pickled_maps, "maps holds object values"),
    "foreign-type": (_type_changed_to_object, "done holds object values"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("use", ["resume", "another-job", "open"])
def test_a_damaged_store_is_one_line_naming_it(finished_store, damage, use):
    model, x, store = finished_store
    spoil, expected = DAMAGE[damage]
    spoil(store)
    before = _checksums(store)
    with pytest.raises(PathvizError) as refused:
        if use == "resume":
            explain(model, x, "gradcam", store=store, chunk_size=4)
        elif use == "another-job":
            explain(model, x, "gradcampp", store=store, chunk_size=4)
        else:
            open_attributions(store)
    message = str(refused.value)
    assert "\n" not in message and str(store) in message and expected in message, message
    assert _checksums(store) == before
