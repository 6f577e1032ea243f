"""Trust: TorchScript and pickles are code and load only when trusted; safetensors or state dicts
with an installed architecture (named by a flag or a model card) are data and need no trust; the
model card is validated field by field; numba's cache folder is private and checked.

The hostile models here really are hostile: each test also shows, with trust, that the file does
write its target, so "nothing was written" proves the refusal and not a dud payload."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_pathviz._demo_model import MEAN, STD, build_demo_model, load_demo_model
from napari_pathviz._numba_cache import configure_numba_cache, numba_cache_dir, unsafe_folder
from napari_pathviz.errors import PathvizError, PathvizWarning
from napari_pathviz.model_card import find_card, read_card
from napari_pathviz.models import check_model, load_model

pytestmark = pytest.mark.filterwarnings("ignore:.*torch\\.jit.*:DeprecationWarning")

DEMO_FACTORY = "napari_pathviz._demo_model:build_demo_model"
PAYLOAD = b"#!/bin/sh\necho owned\n"


# --- hostile TorchScript -------------------------------------------------------------------


class WritesOnLoad(nn.Module):
    """Its __setstate__ runs inside torch.jit.load and writes PAYLOAD to ``target`` through a
    shared memory map: no forward call needed."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.weight = torch.ones(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.training = state[2]
        payload = torch.tensor([35, 33, 47, 98, 105, 110, 47, 115, 104, 10], dtype=torch.uint8)
        mapped = torch.from_file(self.target, shared=True, size=10, dtype=torch.uint8)
        mapped.copy_(payload)  # "#!/bin/sh\n"
        self.weight = state[1] + mapped[:1].float() * 0  # used, so not optimised away


class WritesOnForward(nn.Module):
    """Loads quietly; every forward writes 'A' x 8 to ``target``."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        mapped.fill_(65)
        return self.fc(x.mean((2, 3))) + mapped[:1].float() * 0


def _scripted(tmp_path: Path, cls, name: str) -> tuple[Path, Path]:
    target = tmp_path / f"{name}.written"
    path = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(cls(str(target))), str(path))
    assert not target.exists()
    return path, target


def test_torchscript_that_writes_on_load_is_refused_untrusted(tmp_path):
    path, target = _scripted(tmp_path, WritesOnLoad, "on_load")
    with pytest.raises(PathvizError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: is a TorchScript archive") and "\n" not in message
    assert "--trust-model" in message
    assert not target.exists(), "the archive's code ran without trust"
    # Not through --factory (torch.load) either, nor through a card naming an architecture.
    with pytest.raises(PathvizError, match="is a TorchScript archive .* not weights"):
        load_model(path, factory=DEMO_FACTORY)
    (tmp_path / "on_load.json").write_text(json.dumps({"factory": DEMO_FACTORY}))
    with pytest.raises(PathvizError, match="--trust-model"):
        load_model(path)
    assert not target.exists()
    # Trusted, it is loaded, and its load-time code does write: the refusal above mattered.
    spec = load_model(path, trust_model=True)
    assert spec.scripted and target.read_bytes()[:10] == b"#!/bin/sh\n"


def test_torchscript_that_writes_on_forward_is_refused_untrusted(tmp_path):
    path, target = _scripted(tmp_path, WritesOnForward, "on_forward")
    for _ in range(2):
        with pytest.raises(PathvizError, match="TorchScript archive.*--trust-model"):
            load_model(path)
    assert not target.exists()
    spec = load_model(path, trust_model=True)
    assert not target.exists()  # loading alone is quiet: the code is in forward
    assert check_model(spec, 8) == 2
    assert target.read_bytes() == b"A" * 8


def test_torchscript_is_recognised_by_its_entries_not_its_name(tmp_path):
    """Renamed, or repacked without constants.pkl, an archive is still TorchScript."""
    import zipfile

    path, target = _scripted(tmp_path, WritesOnLoad, "disguised")
    renamed = tmp_path / "weights.safetensors"
    path.rename(renamed)
    with pytest.raises(PathvizError, match="is a TorchScript archive"):
        load_model(renamed, factory=DEMO_FACTORY)
    stripped = tmp_path / "stripped.pth"
    with zipfile.ZipFile(renamed) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("constants.pkl"):
                dst.writestr(item, src.read(item))
    with pytest.raises(PathvizError, match="is a TorchScript archive"):
        load_model(stripped)
    assert not target.exists()


def test_trusted_torchscript_errors_are_one_line(tmp_path):
    path, _ = _scripted(tmp_path, WritesOnForward, "scripted")
    spec = load_model(path, trust_model=True)
    for purpose in ("Grad-CAM", "embeddings"):
        with pytest.raises(PathvizError, match="no hookable layers") as err:
            if purpose == "embeddings":
                spec.feature_module()
            else:
                spec.hookable_model(purpose)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


# --- pickles ---------------------------------------------------------------------------------


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickle_of_a_module(tmp_path, protocol):
    """pickle.dump of a whole module (not torch.save): a pickle to trust, not 'not a model'."""
    model = _sequential().eval()
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump(model, f, protocol=protocol)
    with pytest.raises(PathvizError, match="is a pickle.*--trust-model"):
        load_model(path)
    spec = load_model(path, trust_model=True)
    assert spec.metadata["kind"] == "pickle"
    x = torch.rand(2, 3, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(spec.model(x), model(x), rtol=0, atol=0)


def test_trust_pickle_keyword_still_works(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_sequential(), path)
    with pytest.warns(DeprecationWarning, match="trust_model"):
        spec = load_model(path, trust_pickle=True)
    assert spec.metadata["kind"] == "pickle"


def test_pickle_needing_a_missing_module_is_one_line(tmp_path):
    path = tmp_path / "needs_module.pkl"
    # A pickle naming a module that is not installed (written by hand: protocol 2 opcodes).
    path.write_bytes(b"\x80\x02cno_such_module_pv\nNet\nq\x00)\x81q\x01.")
    with pytest.raises(PathvizError) as err:
        load_model(path, trust_model=True)
    assert str(err.value).startswith(f"{path}: cannot load (ModuleNotFoundError")
    assert "\n" not in str(err.value)


# --- safe formats: safetensors / state dict + factory, and the model card ---------------------


def _demo_weights(seed: int = 0) -> nn.Module:
    model = build_demo_model()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def _save_safetensors(model: nn.Module, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata)
    return path


def _outputs(model, x):
    with torch.inference_mode():
        return model(x)


def test_safetensors_with_factory_needs_no_trust(tmp_path):
    model = _demo_weights()
    path = _save_safetensors(model, tmp_path / "model.safetensors")
    spec = load_model(path, factory=DEMO_FACTORY)
    assert spec.metadata["kind"] == "safetensors + factory" and not spec.scripted
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(_outputs(spec.model, x), _outputs(model, x), rtol=0, atol=0)
    with pytest.raises(PathvizError, match="safetensors holds weights only; give .*--factory"):
        load_model(path)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PathvizError, match="not a readable safetensors file") as err:
        load_model(damaged, factory=DEMO_FACTORY)
    assert "\n" not in str(err.value)


def test_card_beside_weights_is_read_and_flags_override_it(tmp_path):
    model = _demo_weights(1)
    path = _save_safetensors(model, tmp_path / "net.safetensors")
    card = {
        "factory": DEMO_FACTORY,
        "factory_kwargs": {"n_classes": 3},
        "input_size": 48,
        "mpp": 0.5,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.5, 0.5, 0.5],
        "class_names": ["stroma", "tumour", "fat"],
        "explained_output": "logit",
        "activation": "softmax",
    }
    (tmp_path / "net.json").write_text(json.dumps(card))
    spec = load_model(path)
    assert spec.metadata["card"] == str(tmp_path / "net.json")
    assert spec.mean == (0.1, 0.2, 0.3) and spec.std == (0.5, 0.5, 0.5)
    assert spec.input_size == 48 and spec.mpp == 0.5 and spec.explained_output == "logit"
    assert spec.class_names == ("stroma", "tumour", "fat") and spec.activation == "softmax"
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(_outputs(spec.model, x), _outputs(model, x), rtol=0, atol=0)
    assert check_model(spec, 64) == 3
    # Options given win over the card.
    spec = load_model(path, mean=(0.5, 0.5, 0.5), input_size=32, class_names=("a", "b", "c"))
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.input_size == 32 and spec.class_names == ("a", "b", "c")
    patches = np.full((1, 32, 32, 3), 255, np.uint8)
    assert float(spec.preprocess(patches)[0, 0, 0, 0]) == pytest.approx((1.0 - 0.5) / 0.5)
    # A card whose class names do not match the outputs is named.
    card["class_names"] = ["only", "two"]
    (tmp_path / "net.json").write_text(json.dumps(card))
    with pytest.raises(PathvizError, match=r"net\.json: 2 class names for a model with 3 outputs"):
        check_model(load_model(path), 64)


def test_model_card_json_and_embedded_cards(tmp_path):
    model = _demo_weights(2)
    card = {"factory": DEMO_FACTORY, "mean": list(MEAN), "std": list(STD)}
    # model_card.json in the folder, for a state dict saved by torch.save.
    folder = tmp_path / "folder"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "model_card.json").write_text(json.dumps(card))
    spec = load_model(folder / "weights.pt")
    assert spec.metadata["kind"] == "state dict + factory" and spec.mean == MEAN
    # Inside the safetensors header.
    inside = _save_safetensors(
        model, tmp_path / "inside.safetensors", {"model_card": json.dumps(card)}
    )
    spec = load_model(inside)
    assert spec.metadata["card"] == f"{inside}[model_card]" and spec.std == STD
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(_outputs(spec.model, x), _outputs(model, x), rtol=0, atol=0)
    # Inside a TorchScript archive's extra files: read without loading, applied when trusted.
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(
        torch.jit.script(_sequential()),
        str(scripted),
        _extra_files={"model_card.json": json.dumps({"mean": [0.4, 0.4, 0.4]})},
    )
    assert find_card(scripted).mean == (0.4, 0.4, 0.4)
    assert load_model(scripted, trust_model=True).mean == (0.4, 0.4, 0.4)


def test_demo_model_ships_its_card():
    from importlib import resources

    weights = resources.files("napari_pathviz") / "data" / "demo_model.pt"
    spec = load_model(str(weights))
    assert spec.metadata["card"].endswith("demo_model.json")
    assert spec.mean == MEAN and spec.std == STD and spec.mpp == 0.5
    assert spec.class_names == ("background", "dab_negative", "dab_positive")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_outputs(spec.model, x), _outputs(load_demo_model(), x))


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ("{not json", "the model card is not JSON"),
        ("[1, 2]", "a model card is a JSON object, found list"),
        ({"factroy": DEMO_FACTORY}, "unknown model card field 'factroy'"),
        ({"factory": "no spaces"}, "field 'factory' must be a registered architecture's name"),
        ({"factory": ":Net"}, "field 'factory' must be a registered architecture's name"),
        ({"factory_kwargs": [1]}, "field 'factory_kwargs' must be a JSON object"),
        ({"input_size": 0}, "field 'input_size' must be a whole number of pixels"),
        ({"input_size": 1e9}, "field 'input_size' must be a whole number of pixels"),
        ({"input_size": True}, "field 'input_size' must be a whole number"),
        ({"mpp": -1}, "field 'mpp' must be microns per pixel"),
        ({"mean": [0.5, 0.5]}, "field 'mean' must be a list of 3 numbers"),
        ({"mean": [0.5, "x", 0.5]}, "field 'mean' must be a list of 3 numbers"),
        ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "field 'std' must be a list of 3 positive"),
        ({"std": [0.2] * 3}, "field 'std' is given without 'mean'"),
        ({"class_names": []}, "field 'class_names' must be a non-empty list"),
        ({"class_names": ["a", ""]}, "field 'class_names' must be a non-empty string"),
        ({"class_names": ["a", "b", "a"]}, "field 'class_names' names 'a' twice"),
        ({"class_names": "a,b"}, "field 'class_names' must be a non-empty list"),
        ({"activation": "relu"}, "field 'activation' must be one of auto, none"),
        ({"explained_output": "prob"}, "field 'explained_output' must be one of logit"),
        ({"resize_mode": "pad"}, "field 'resize_mode' must be one of resize, crop"),
        ({"feature_layer": 3}, "field 'feature_layer' must be a non-empty string"),
    ],
)
def test_bad_cards_are_named_in_one_line(tmp_path, card, message):
    path = tmp_path / "m.pt"
    torch.save(build_demo_model().state_dict(), path)
    card_path = tmp_path / "m.json"
    card_path.write_text(card if isinstance(card, str) else json.dumps(card))
    with pytest.raises(PathvizError) as err:
        load_model(path, factory=DEMO_FACTORY)
    text = str(err.value)
    assert text.startswith(f"{card_path}: ") and message in text and "\n" not in text


def test_explicit_card_and_oversized_card(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(build_demo_model().state_dict(), path)
    elsewhere = tmp_path / "cards" / "demo.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({"factory": DEMO_FACTORY, "mean": [0.3] * 3}))
    assert load_model(path, card=elsewhere).mean == (0.3, 0.3, 0.3)
    with pytest.raises(PathvizError, match="--model-card .*absent.json: no such file"):
        load_model(path, card=tmp_path / "absent.json")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"description": "x" * (2 << 20)}))
    with pytest.raises(PathvizError, match="too large to be one"):
        read_card(big)


# --- a card cannot choose code to run --------------------------------------------------------


def test_card_factory_that_is_not_registered_is_refused(tmp_path):
    """Callables a card might name to run code, and classes of installed packages alike: none is
    a registered architecture, so each is refused by name, in one line, before any import."""
    marker = tmp_path / "ran.txt"
    path = tmp_path / "m.pt"
    torch.save(build_demo_model().state_dict(), path)
    card = tmp_path / "m.json"
    hostile = [
        ("subprocess:run", {"args": ["touch", str(marker)]}),
        ("os:system", {"command": f"touch {marker}"}),
        ("torch.nn.init:ones_", {}),
        ("napari_pathviz.cli:main", {"argv": ["--help"]}),
        ("no_such_package_pv:Net", {}),
        ("napari_pathviz", {}),  # an alias nobody registered
    ]
    for factory, kwargs in hostile:
        card.write_text(json.dumps({"factory": factory, "factory_kwargs": kwargs}))
        with pytest.raises(PathvizError) as err:
            load_model(path)
        message = str(err.value)
        assert message.startswith(f"{card}: factory '{factory}' is not a registered architecture")
        assert f"module {factory.partition(':')[0]} was not imported" in message
        assert f"--factory {factory} or --trust-model" in message and "\n" not in message
    assert not marker.exists()
    assert "no_such_package_pv" not in sys.modules


def test_card_factory_from_an_installed_package_needs_consent(tmp_path):
    """torch.nn:Linear is harmless, but a card may not choose installed code either: the user
    confirms it by typing it (--factory) or trusting the model."""
    linear = nn.Linear(3, 2)
    path = _save_safetensors(linear, tmp_path / "linear.safetensors")
    kwargs = {"in_features": 3, "out_features": 2}
    (tmp_path / "linear.json").write_text(
        json.dumps({"factory": "torch.nn:Linear", "factory_kwargs": kwargs})
    )
    with pytest.raises(PathvizError, match="'torch.nn:Linear' is not a registered architecture"):
        load_model(path)
    x = torch.rand(4, 3)
    for spec in (load_model(path, factory="torch.nn:Linear"), load_model(path, trust_model=True)):
        assert spec.metadata["factory_kwargs"] == kwargs  # the card's, with the user's consent
        torch.testing.assert_close(_outputs(spec.model, x), _outputs(linear, x), rtol=0, atol=0)


# --- numba's cache folder --------------------------------------------------------------------


@pytest.fixture
def clean_numba_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_numba_cache_is_private_per_user(clean_numba_env):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PathvizWarning)
        folder = numba_cache_dir()
    assert folder == str(clean_numba_env / "cache" / f"numba-{os.getuid()}")
    assert _mode(folder) == 0o700 and os.stat(folder).st_uid == os.getuid()
    assert numba_cache_dir() == folder  # reused, not recreated


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_numba_cache_writable_by_others_is_not_used(clean_numba_env, mode):
    shared = clean_numba_env / "cache" / f"numba-{os.getuid()}"
    shared.mkdir(parents=True)
    os.chmod(shared, mode)
    with pytest.warns(PathvizWarning, match="writable by other users") as caught:
        folder = numba_cache_dir()
    assert folder != str(shared) and _mode(folder) == 0o700
    assert str(shared) in str(caught[0].message)


def test_numba_cache_owned_by_another_user_is_not_used(clean_numba_env, monkeypatch):
    foreign = clean_numba_env / "foreign"
    foreign.mkdir(mode=0o700)
    other = os.getuid() + 4242
    # The check itself, against a different user id; and for real where we may chown.
    assert unsafe_folder(foreign, other) == f"is owned by user {os.getuid()}, not by you ({other})"
    if os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(foreign, other, -1)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(foreign))
    with pytest.warns(PathvizWarning, match=f"is owned by user {other}"):
        folder = numba_cache_dir()
    assert folder != str(foreign) and os.stat(folder).st_uid == os.getuid()


def test_numba_cache_link_or_open_parent_is_not_used(clean_numba_env, monkeypatch):
    open_parent = clean_numba_env / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(open_parent / "numba"))
    with pytest.warns(PathvizWarning, match="lies in a world-writable folder"):
        numba_cache_dir()
    os.chmod(open_parent, 0o777 | stat.S_ISVTX)  # sticky, as /tmp: others cannot replace it
    with warnings.catch_warnings():
        warnings.simplefilter("error", PathvizWarning)
        assert numba_cache_dir() == str(open_parent / "numba")
    target = clean_numba_env / "target"
    target.mkdir(mode=0o777)
    os.chmod(target, 0o777)
    link = clean_numba_env / "link"
    link.symlink_to(target)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(link))
    with pytest.warns(PathvizWarning, match="writable by other users"):
        assert numba_cache_dir() != str(link)


POISON_SOURCE = """
import os, sys
from numba import njit

@njit(cache=True)
def add_one(x):
    return x + 1
"""

POISON_DRIVER = """
import os, pickle, sys, warnings
sys.path.insert(0, {folder!r})
if sys.argv[1] == "configure":
    from napari_pathviz._numba_cache import configure_numba_cache
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print("cache:", configure_numba_cache())
    print("warned:", any("writable by other users" in str(w.message) for w in caught))
import kernels_pv
print("result:", kernels_pv.add_one(41))
"""


class _Poison:
    """Unpickling it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (
            eval,
            (f"open({self.marker!r}, 'w').write('numba cache code ran')",),
        )


def test_poisoned_numba_cache_is_not_unpickled(tmp_path):
    """A cache index planted in a world-writable folder runs code in plain numba, and is not
    read once pathviz configures the cache."""
    (tmp_path / "kernels_pv.py").write_text(POISON_SOURCE)
    driver = tmp_path / "driver.py"
    driver.write_text(POISON_DRIVER.format(folder=str(tmp_path)))
    cache = tmp_path / "shared-numba"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PATHVIZ_CACHE_DIR": str(tmp_path)}

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, str(driver), mode], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "result: 42" in run("plain")  # numba writes its cache and index
    indexes = list(cache.rglob("*.nbi"))
    assert indexes, "numba wrote no cache index"
    marker = tmp_path / "marker.txt"
    for index in indexes:  # an attacker who can write the folder plants a pickle
        index.write_bytes(pickle.dumps(_Poison(str(marker))))
    os.chmod(cache, 0o777)
    out = run("configure")
    assert "warned: True" in out and "result: 42" in out
    assert not marker.exists(), "the planted cache index was unpickled"
    run("plain")  # without the check, numba does unpickle it: the poison is real
    assert marker.read_text() == "numba cache code ran"


def test_configure_numba_cache_sets_the_environment(clean_numba_env, monkeypatch):
    import numba.core.config

    monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
    folder = configure_numba_cache()
    assert os.environ["NUMBA_CACHE_DIR"] == folder and _mode(folder) == 0o700
    assert folder == numba.core.config.CACHE_DIR  # numba, already imported, is told too


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory):
    """The demo slide and a table of its first 12 patches."""
    import pandas as pd

    from napari_pathviz._demo import ensure_demo_data

    paths = ensure_demo_data()
    folder = tmp_path_factory.mktemp("demo_job")
    table = folder / "patches.parquet"
    pd.read_parquet(paths["patches"]).head(12).to_parquet(table)
    return {"slide": paths["slide"], "patches": table, "folder": folder}


def _error_lines(stderr: str) -> list[str]:
    """stderr without progress bars and warnings: what the user reads as the error."""
    return [
        line
        for line in stderr.split("\n")
        if line.strip() and "\r" not in line and ": warning: " not in line
    ]


def _extract(demo_job, out: Path, *model_args, env: dict | None = None):
    from conftest import run_cli

    return run_cli(
        "extract",
        "-m",
        *map(str, model_args),
        "--slide",
        demo_job["slide"],
        "--patches",
        demo_job["patches"],
        "-o",
        out,
        "--device",
        "cpu",
        env=env,
    )


@pytest.mark.parametrize("command", ["extract", "shapley-plot"])
def test_cli_refuses_hostile_torchscript_in_one_line(tmp_path, demo_job, command):
    from conftest import run_cli

    path, target = _scripted(tmp_path, WritesOnLoad, "hostile")
    out = tmp_path / ("out.parquet" if command == "extract" else "out.png")
    if command == "extract":
        done = _extract(demo_job, out, path)
    else:
        done = run_cli(
            command,
            "-m",
            path,
            "--slide",
            demo_job["slide"],
            "--patches",
            demo_job["patches"],
            "--ids",
            "0",
            "1",
            "-o",
            out,
        )
    assert done.returncode == 2
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(path) in lines[0] and "is a TorchScript archive" in lines[0]
    assert "--trust-model" in lines[0]
    assert not target.exists() and not out.exists()


def test_cli_safetensors_and_card_need_no_trust(tmp_path, demo_job):
    """The demo weights as safetensors with the demo card beside them: no flag but -m, the same
    numbers as the shipped state dict with every option spelled out."""
    import shutil
    from importlib import resources

    import pandas as pd

    data = resources.files("napari_pathviz") / "data"
    weights = _save_safetensors(load_demo_model(), tmp_path / "demo.safetensors")
    shutil.copy(data / "demo_model.json", tmp_path / "demo.json")
    done = _extract(demo_job, tmp_path / "card.parquet", weights)
    assert done.returncode == 0, done.stderr
    spelled = ["--factory", DEMO_FACTORY, "--mean", *map(str, MEAN), "--std", *map(str, STD)]
    done = _extract(demo_job, tmp_path / "flags.parquet", data / "demo_model.pt", *spelled)
    assert done.returncode == 0, done.stderr
    by_card = pd.read_parquet(tmp_path / "card.parquet")
    by_flags = pd.read_parquet(tmp_path / "flags.parquet")
    probs = [c for c in by_flags.columns if c.startswith("prob_")]
    assert len(by_card) == 12 and len(probs) >= 3
    np.testing.assert_allclose(by_card[probs], by_flags[probs], atol=1e-6)
    # The card's normalisation is really used: a flag that overrides it changes the numbers.
    done = _extract(demo_job, tmp_path / "grey.parquet", weights, "--mean", "0.5", "0.5", "0.5")
    assert done.returncode == 0, done.stderr
    grey = pd.read_parquet(tmp_path / "grey.parquet")
    assert np.abs(grey[probs].to_numpy() - by_card[probs].to_numpy()).max() > 0.01


def test_cli_trust_pickle_is_an_alias_of_trust_model(tmp_path, demo_job):
    import zoo

    path = tmp_path / "whole.pt"
    torch.save(zoo.resnet_style(), path)  # a whole module: unpickling imports zoo
    env = {"PYTHONPATH": str(Path(zoo.__file__).parent)}
    refused = _extract(demo_job, tmp_path / "refused.parquet", path, env=env)
    assert refused.returncode == 2 and "is a pickle" in refused.stderr
    assert not (tmp_path / "refused.parquet").exists()
    for flag in ("--trust-pickle", "--trust-model"):
        done = _extract(demo_job, tmp_path / f"{flag}.parquet", path, flag, env=env)
        assert done.returncode == 0, done.stderr


def test_cli_bad_card_is_one_line(tmp_path, demo_job):
    weights = _save_safetensors(load_demo_model(), tmp_path / "demo.safetensors")
    card = tmp_path / "demo.json"
    card.write_text(json.dumps({"factory": DEMO_FACTORY, "mean": [0.8, 0.7]}))
    done = _extract(demo_job, tmp_path / "out.parquet", weights)
    assert done.returncode == 2
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and f"{card}: model card field 'mean'" in lines[0], done.stderr


def test_cli_gradcam_on_trusted_torchscript_is_one_line(tmp_path, demo_job):
    from conftest import run_cli

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(load_demo_model()), str(path))
    done = run_cli(
        "gradcam",
        "-m",
        path,
        "--trust-model",
        "--slide",
        demo_job["slide"],
        "--patches",
        demo_job["patches"],
        "--ids",
        "0",
        "1",
        "-o",
        tmp_path / "g.png",
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "no hookable layers" in lines[0]


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(PathvizError, match="is a folder, not a model file") as err:
        load_model(tmp_path)
    assert str(err.value).startswith(str(tmp_path))


def test_damaged_torch_files_are_not_called_pickles(tmp_path):
    """A truncated state dict is a damaged file, not code to trust."""
    state = build_demo_model().state_dict()
    for legacy in (False, True):
        path = tmp_path / f"truncated_{legacy}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(PathvizError, match="not a model file") as err:
            load_model(path)
        assert "--trust-model" not in str(err.value) and "\n" not in str(err.value)


def test_metadata_names_the_factory_used(tmp_path):
    """Stores key on the factory and its kwargs: they are in the metadata, from a flag or a card."""
    path = _save_safetensors(build_demo_model(n_classes=2), tmp_path / "two.safetensors")
    spec = load_model(path, factory=DEMO_FACTORY, factory_kwargs={"n_classes": 2})
    assert spec.metadata["factory"] == DEMO_FACTORY
    assert spec.metadata["factory_kwargs"] == {"n_classes": 2}
    (tmp_path / "two.json").write_text(
        json.dumps({"factory": DEMO_FACTORY, "factory_kwargs": {"n_classes": 2}})
    )
    spec = load_model(path)
    assert spec.metadata["factory_kwargs"] == {"n_classes": 2}
    assert spec.metadata["card_fields"]["factory"] == DEMO_FACTORY
