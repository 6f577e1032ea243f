"""A model card is data: the architecture it names must be registered (the package's own, or an
installed distribution's entry point in ``napari_pathviz.architectures``), decided by name before
anything is imported; any other module runs only with the user's consent (``--trust-model``,
``--factory``, the widgets' trust box or Factory field).

The hostile modules here really run when imported (each writes a marker file), and each test
shows that with consent they do: "no marker" proves the refusal, not a dud module."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from napari_pathviz import architectures
from napari_pathviz._demo_model import MEAN, STD, build_demo_model
from napari_pathviz.errors import PathvizError
from napari_pathviz.model_card import read_card
from napari_pathviz.models import load_model
from napari_pathviz.slide_head import load_head
from napari_pathviz.slide_level import load_two_stage

pytestmark = pytest.mark.filterwarnings("ignore::napari_pathviz.errors.PathvizWarning")

# Installed with the test extra: importing RangeHTTPServer.__main__ serves the working folder
# on 0.0.0.0:8000; the others print or start a shell. None of them is an architecture.
CLASSES = ["background", "dab_negative", "dab_positive"]
RUNS_ON_IMPORT = [
    "RangeHTTPServer.__main__:Net",
    "IPython.__main__:Net",
    "numba.testing.__main__:Net",
    "PIL.__main__:Net",
]


def _hostile_module(folder: Path, name: str) -> Path:
    """``folder/name.py``, which writes ``folder/name.ran`` when imported and offers the demo
    architecture as ``build`` and ``Net`` (and the MIL stages as ``Encoder``/``Head``); returns
    the marker."""
    marker = folder / f"{name}.ran"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            Path({str(marker)!r}).write_text("module code ran")
            from napari_pathviz._demo_model import build_demo_model as build
            Net = type(build())  # an nn.Module class, as a real architecture would be
            from napari_pathviz.mil import GatedAttentionMIL as Head, SmallConvEncoder as Encoder
            """
        )
    )
    return marker


def _bundle(folder: Path, factory: str) -> Path:
    """The demo weights (a state dict) with a card beside them naming ``factory`` (and the
    demo's normalisation and classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.pt"
    torch.save(build_demo_model().state_dict(), weights)
    card = {"factory": factory, "mean": list(MEAN), "std": list(STD), "class_names": CLASSES}
    (folder / "model.json").write_text(json.dumps(card))
    return weights


@pytest.fixture
def forget(monkeypatch):
    """Removes the named modules from sys.modules (before and after the test)."""

    def drop(*names: str) -> None:
        for name in names:
            monkeypatch.delitem(sys.modules, name, raising=False)

    return drop


# --- the registry ----------------------------------------------------------------------------


def test_own_architectures_resolve_by_alias_and_target(tmp_path):
    """Every card the package ships or writes names a registered architecture, each registered
    target really is a callable of the package, and nothing else resolves."""
    import importlib
    from importlib import resources

    from napari_pathviz._demo_mil import save_demo_mil
    from napari_pathviz.mil import GatedAttentionMIL, SmallConvEncoder
    from napari_pathviz.vit import PatchViT, demo_vit_card

    shipped = read_card(resources.files("napari_pathviz") / "data" / "demo_model.json")
    mil = read_card(save_demo_mil(SmallConvEncoder(4), GatedAttentionMIL(4, 4, 2), tmp_path))
    written = [shipped.factory, mil.encoder["factory"], mil.head["factory"]]
    written.append(demo_vit_card(PatchViT(depth=1))["factory"])
    assert [architectures.resolve(f).alias for f in written] == [
        "demo_model", "small_conv_encoder", "gated_attention_mil", "patch_vit",
    ]  # fmt: skip
    for alias, target in architectures.OWN.items():
        found = architectures.resolve(alias)
        assert found.target == target and found.origin == "napari-pathviz"
        assert architectures.resolve(target) == found
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    for unknown in [*RUNS_ON_IMPORT, "torch.nn:Linear", "napari_pathviz.cli:main", "nope"]:
        assert architectures.resolve(unknown) is None
    assert not {"RangeHTTPServer.__main__", "IPython.__main__", "PIL.__main__"} & set(sys.modules)


def test_modules_that_run_on_import_are_refused_by_load_model(tmp_path):
    """In a fresh interpreter as a user's would be (RangeHTTPServer's __main__ serves forever
    when imported there: a regression times out instead of hanging the suite)."""
    weights = _bundle(tmp_path / "bundle", "demo_model")
    script = textwrap.dedent(
        f"""
        import json, sys, warnings
        warnings.simplefilter("ignore")
        from napari_pathviz.models import load_model
        from napari_pathviz.errors import PathvizError
        for factory in {RUNS_ON_IMPORT!r}:
            open({str(weights.with_suffix(".json"))!r}, "w").write(json.dumps({{"factory": factory}}))
            try:
                load_model({str(weights)!r})
                print("LOADED", factory)
            except PathvizError as err:
                print("REFUSED", err)
        print("IMPORTED", sorted(m for m in sys.modules if m.endswith("__main__") and m != "__main__"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    card = weights.with_suffix(".json")
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == len(RUNS_ON_IMPORT), done.stdout
    for line, factory in zip(refused, RUNS_ON_IMPORT, strict=True):
        module = factory.partition(":")[0]
        assert line.startswith(f"REFUSED {card}: factory '{factory}' is not a registered")
        assert f"module {module} was not imported" in line
    assert lines[-1] == "IMPORTED []", done.stdout


PLACES = ["beside the weights", "in the bundle's parent folder", "elsewhere on sys.path"]


def _planted(tmp_path: Path, place: str, monkeypatch) -> tuple[Path, Path, str]:
    """A bundle whose card names a module planted ``place`` (and importable from there, as it
    is when Python starts in that folder); returns (weights, marker, module name)."""
    name = f"pv_planted_{PLACES.index(place)}"
    bundle = tmp_path / "downloads" / "bundle"
    folder = {
        PLACES[0]: bundle,
        PLACES[1]: bundle.parent,
        PLACES[2]: tmp_path / "lib",
    }[place]
    marker = _hostile_module(folder, name)
    weights = _bundle(bundle, f"{name}:Net")
    if place == PLACES[1]:
        monkeypatch.chdir(folder)  # `python -m napari` or a notebook started there
    monkeypatch.syspath_prepend(str(folder))
    return weights, marker, name


@pytest.mark.parametrize("place", PLACES)
def test_a_card_module_anywhere_on_sys_path_is_refused(tmp_path, monkeypatch, forget, place):
    weights, marker, name = _planted(tmp_path, place, monkeypatch)
    forget(name)
    with pytest.raises(PathvizError) as err:
        load_model(weights)
    message = str(err.value)
    assert message.startswith(f"{weights.with_suffix('.json')}: factory '{name}:Net' is not")
    assert f"module {name} was not imported" in message and "\n" not in message
    assert not marker.exists() and name not in sys.modules
    # Consent: trusted, or typed by the user, the module is imported (and so runs).
    spec = load_model(weights, trust_model=True)
    assert marker.exists() and spec.metadata["factory"] == f"{name}:Net"
    marker.unlink()
    forget(name)
    spec = load_model(weights, factory=f"{name}:Net")
    assert marker.exists() and spec.metadata["kind"] == "state dict + factory"


def test_two_stage_cards_name_registered_stages_only(tmp_path, monkeypatch, forget):
    """The encoder's and the head's factories follow the card's rule, for extract's two-stage
    models and for heads run on precomputed features."""
    from napari_pathviz._demo_mil import save_demo_mil
    from napari_pathviz.mil import GatedAttentionMIL, SmallConvEncoder

    card = save_demo_mil(
        SmallConvEncoder(dim=16, width=8), GatedAttentionMIL(16, 16, 2), tmp_path / "mil"
    )
    assert load_two_stage(read_card(card)).feature_dim == 16  # the package's own: no consent
    marker = _hostile_module(tmp_path / "lib", "pv_stage_arch")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    data = json.loads(card.read_text())
    for stage, attr in (("encoder", "Encoder"), ("head", "Head")):
        forget("pv_stage_arch")
        hostile = json.loads(json.dumps(data))
        hostile[stage]["factory"] = f"pv_stage_arch:{attr}"
        card.write_text(json.dumps(hostile))
        loaders = [lambda: load_two_stage(read_card(card))]
        if stage == "head":
            loaders.append(lambda: load_head(read_card(card)))
        for load in loaders:
            with pytest.raises(PathvizError) as err:
                load()
            message = str(err.value)
            assert message.startswith(f"{card}: {stage} factory 'pv_stage_arch:{attr}' is not")
            assert "module pv_stage_arch was not imported" in message
            assert "confirm it with --trust-model" in message  # --factory: not for two stages
        assert not marker.exists() and "pv_stage_arch" not in sys.modules
        model = load_two_stage(read_card(card), trust_model=True)
        assert marker.exists() and model.feature_dim == 16
        marker.unlink()


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory):
    import pandas as pd

    from napari_pathviz._demo import ensure_demo_data

    paths = ensure_demo_data()
    table = tmp_path_factory.mktemp("registry_job") / "patches.parquet"
    pd.read_parquet(paths["patches"]).head(8).to_parquet(table)
    return {"slide": paths["slide"], "patches": table}


def _extract(demo_job, weights: Path, out: Path, *flags: str, env: dict | None = None):
    return run_cli(
        "extract", "-m", weights, *flags, "--slide", demo_job["slide"],
        "--patches", demo_job["patches"], "-o", out, "--device", "cpu", env=env,
    )  # fmt: skip


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_cli_extract_refuses_a_card_naming_a_server(tmp_path, demo_job):
    """RangeHTTPServer.__main__ would serve the working folder; extract says so in one line."""
    weights = _bundle(tmp_path / "bundle", "RangeHTTPServer.__main__:Net")
    out = tmp_path / "out.parquet"
    done = _extract(demo_job, weights, out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert f"{weights.with_suffix('.json')}: factory 'RangeHTTPServer.__main__:Net'" in lines[0]
    assert "module RangeHTTPServer.__main__ was not imported" in lines[0]
    assert "Serving HTTP" not in done.stdout + done.stderr and not out.exists()


def test_cli_extract_needs_consent_for_a_card_module(tmp_path, demo_job):
    lib = tmp_path / "lib"
    marker = _hostile_module(lib, "pv_cli_arch")
    weights = _bundle(tmp_path / "bundle", "pv_cli_arch:Net")
    env = {"PYTHONPATH": str(lib)}  # importable, as an installed module would be
    refused = _extract(demo_job, weights, tmp_path / "refused.parquet", env=env)
    assert refused.returncode == 2
    lines = _error_lines(refused.stderr)
    assert len(lines) == 1 and "module pv_cli_arch was not imported" in lines[0], refused.stderr
    assert not marker.exists() and not (tmp_path / "refused.parquet").exists()
    for consent in (["--trust-model"], ["--factory", "pv_cli_arch:Net"]):
        out = tmp_path / f"{consent[0]}.parquet"
        done = _extract(demo_job, weights, out, *consent, env=env)
        assert done.returncode == 0, done.stderr
        assert marker.exists() and out.exists()
        marker.unlink()


# --- entry points: a lab registers its own architecture ----------------------------------------


def _distribution(site: Path, name: str, entries: dict[str, str]) -> None:
    """Installed-distribution metadata (what pip writes) declaring ``entries`` in the group."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"[{architectures.ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_an_installed_distribution_registers_its_architecture(tmp_path, monkeypatch, forget):
    site = tmp_path / "site"
    marker = _hostile_module(site, "pv_lab_models")  # the lab's module: runs once registered
    _distribution(site, "pv-lab-models", {"pv_lab_net": "pv_lab_models:build"})
    monkeypatch.syspath_prepend(str(site))
    forget("pv_lab_models")
    found = architectures.resolve("pv_lab_net")
    assert found.target == "pv_lab_models:build" and found.origin == "pv-lab-models"
    assert not marker.exists(), "reading the registry imported the module"
    for named in ("pv_lab_net", "pv_lab_models:build"):  # by alias, or by the exact target
        weights = _bundle(tmp_path / named.replace(":", "_"), named)
        spec = load_model(weights)  # no consent needed
        assert spec.metadata["factory"] == "pv_lab_models:build" and marker.exists()
    # A user may type the alias too.
    assert load_model(weights, factory="pv_lab_net").metadata["factory"] == "pv_lab_models:build"
    # Another attribute of the same module is not registered.
    other = _bundle(tmp_path / "other", "pv_lab_models:Head")
    with pytest.raises(PathvizError, match="'pv_lab_models:Head' is not a registered"):
        load_model(other)


def test_registrations_that_are_not_honoured(tmp_path, monkeypatch, forget):
    """The package's own names cannot be taken over; a name two distributions declare for
    different targets names neither; metadata in the working folder (a downloaded bundle's,
    when Python starts there) registers nothing."""
    site = tmp_path / "site"
    marker = _hostile_module(site, "pv_takeover")
    _distribution(
        site, "pv-takeover", {"demo_model": "pv_takeover:build", "pv_x": "pv_takeover:build"}
    )
    _distribution(site, "pv-rival", {"pv_x": "pv_takeover:Head"})
    monkeypatch.syspath_prepend(str(site))
    forget("pv_takeover")
    assert architectures.resolve("demo_model").target == architectures.OWN["demo_model"]
    assert architectures.resolve("pv_x") is None
    load_model(_bundle(tmp_path / "own", "demo_model"))
    with pytest.raises(PathvizError, match="'pv_x' is not a registered architecture"):
        load_model(_bundle(tmp_path / "ambiguous", "pv_x"))
    assert not marker.exists()

    bundle = tmp_path / "downloaded"
    plant = _hostile_module(bundle, "pv_bundled")
    _distribution(bundle, "pv-bundled", {"pv_bundled_net": "pv_bundled:build"})
    weights = _bundle(bundle, "pv_bundled_net")
    monkeypatch.chdir(bundle)
    monkeypatch.syspath_prepend(str(bundle))
    forget("pv_bundled")
    with pytest.raises(PathvizError) as err:
        load_model(weights)
    assert "'pv_bundled_net' is not a registered architecture (pv-bundled declares it, but " in (
        str(err.value)
    )
    assert "from the working folder" in str(err.value)
    assert not plant.exists() and "pv_bundled" not in sys.modules
    monkeypatch.chdir(tmp_path)  # the same metadata, installed elsewhere, is honoured
    assert load_model(weights).metadata["factory"] == "pv_bundled:build" and plant.exists()


# --- napari ----------------------------------------------------------------------------------


def test_inference_widget_refuses_and_then_trusts(
    make_napari_viewer, qtbot, notifications, tmp_path, monkeypatch, forget
):
    """PIL.__main__ (an installed module that prints a report when imported) and a planted
    module; not RangeHTTPServer's, which would hang this process should it ever be imported:
    the same check before any import refuses both (test_cli_extract_refuses_a_card_naming_a_server
    shows it for the server)."""
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Model inference")
    patches = viewer.layers[-1]
    before = patches.features.copy()
    installed = _bundle(tmp_path / "installed", "PIL.__main__:Net")
    lib = tmp_path / "lib"
    marker = _hostile_module(lib, "pv_widget_arch")
    monkeypatch.syspath_prepend(str(lib))
    forget("pv_widget_arch", "PIL.__main__")
    planted = _bundle(tmp_path / "planted", "pv_widget_arch:Net")
    for weights, module in ((installed, "PIL.__main__"), (planted, "pv_widget_arch")):
        widget.model_path.value = str(weights)
        widget.run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
        refusal = f"{weights.with_suffix('.json')}: factory '{module}"
        shown = [m for m in notifications if m.startswith(refusal)]
        assert shown and "not a registered architecture" in shown[-1]
        assert "--" not in shown[-1]  # the GUI's words: the Factory field, the trust box
        assert 'the Factory field or "Trust this model\'s code"' in shown[-1]
        assert f"module {module} was not imported" in widget.status.value
        assert module not in sys.modules
    assert not marker.exists()
    assert patches.features.equals(before)  # nothing half-written
    assert widget.form.trust_model.text == "Trust this model's code"
    widget.form.trust_model.value = True  # consent: the module runs, the model too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        widget.run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert marker.exists()
    assert widget.status.value == f"predictions for {len(patches.data)} patches"
