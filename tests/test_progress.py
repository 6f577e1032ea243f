"""Every long step shows progress: UMAP's sub-steps, the demo's steps, the CLI's steps and the
GUI demo loading into an open viewer (issue 11, item 4), and the CLI's help and one-line refusals
(item 8)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_pathviz._umap_stages import STAGES
from napari_pathviz.embedding import UMAPParams, _import_umap, pca_reduce, umap_embed
from napari_pathviz.store import ResultsStore


def _stage_names(reports: list[tuple[float, str]]) -> list[str]:
    """The stage of each report ("epochs: 12/500" -> "epochs"), consecutive repeats merged."""
    names: list[str] = []
    for _, stage in reports:
        name = stage.split(":")[0]
        if not names or names[-1] != name:
            names.append(name)
    return names


def test_umap_reports_its_five_stages_and_equals_plain_umap(tmp_path):
    """Above 4,096 patches umap-learn searches neighbours by NN-descent: that search runs as its
    own stage, and the layout is still umap-learn's, bit for bit."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (6, 60))
    features = (centres[rng.integers(0, 6, 4200)] + rng.normal(0, 1, (4200, 60))).astype(np.float32)
    reports: list[tuple[float, str]] = []
    coords = umap_embed(
        features,
        UMAPParams(random_state=0),
        knn="nndescent",
        store=ResultsStore(tmp_path / "store"),
        use_cache=False,
        progress=lambda fraction, stage: reports.append((fraction, stage)),
    )
    assert _stage_names(reports) == [*STAGES, "done"]
    assert reports[0] == (0.0, "PCA: 60 to 50 dimensions")
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    epochs = [s for _, s in reports if s.startswith("epochs")]
    assert epochs[0] == "epochs: 0/500" and epochs[-1] == "epochs: 500/500"
    assert len(epochs) > 3  # the bar moves during the epochs, not only at their ends

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _import_umap().UMAP(random_state=0).fit_transform(pca_reduce(features, 50, 0))
    np.testing.assert_array_equal(coords, plain.astype(np.float32))


def test_small_umap_names_its_stages_in_order(tmp_path):
    """Under 4,096 patches umap-learn's exact neighbours and fuzzy set are one step."""
    rng = np.random.default_rng(1)
    reports: list[tuple[float, str]] = []
    umap_embed(
        rng.normal(size=(300, 8)).astype(np.float32),
        UMAPParams(n_neighbors=10, random_state=0),
        knn="nndescent",
        store=ResultsStore(tmp_path / "store"),
        progress=lambda fraction, stage: reports.append((fraction, stage)),
    )
    assert _stage_names(reports) == ["nearest neighbours", "spectral init", "epochs", "done"]
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)


# --- the CLI: step lines, bars on a terminal, help, one-line refusals -------------------------


def _small_embeddings(path):
    """300 patches with 8 features and their keys, as ``pathviz extract`` writes them."""
    import pandas as pd

    rng = np.random.default_rng(2)
    keys = pd.DataFrame(
        {"ID": "s1", "x": np.arange(300) * 64, "y": 0, "patch_size": 64, "tumor": 0.0}
    )
    feats = pd.DataFrame(rng.normal(size=(300, 8)), columns=[f"feat_{j}" for j in range(8)])
    pd.concat([keys, feats], axis=1).to_parquet(path, index=False)
    return path


def test_plot_embeddings_lists_its_steps_on_stderr(tmp_path):
    from conftest import run_cli

    emb = _small_embeddings(tmp_path / "emb.parquet")
    done = run_cli(
        "plot-embeddings", "-i", emb, "-o", tmp_path / "u.html", "-nn", "10", "--progress", "lines"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"pathviz plot-embeddings: reading the embeddings {emb}"
    umap = [line.split("UMAP of 300 patches")[1] for line in lines if "UMAP of 300" in line]
    # The announcement, then each stage once (not every epoch), in order.
    assert umap[0] == "" and [u.split(":")[1].strip() for u in umap[1:]] == [
        "nearest neighbours",
        "spectral init",
        "epochs",
        "done",
    ]
    # Without --progress (stderr a pipe, not a terminal): nothing but results.
    quiet = run_cli("plot-embeddings", "-i", emb, "-o", tmp_path / "v.html", "-nn", "10")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_a_terminal_sees_steps_and_a_bar(tmp_path):
    """As a user at a terminal: stderr a tty, no option: step lines and a redrawn tqdm bar."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    emb = _small_embeddings(tmp_path / "emb.parquet")
    main_fd, child_fd = pty.openpty()
    exe = os.path.join(os.path.dirname(sys.executable), "pathviz")
    env = {k: v for k, v in os.environ.items() if k != "PATHVIZ_PROGRESS"}
    argv = [exe, "plot-embeddings", "-i", str(emb), "-o", str(tmp_path / "u.html"), "--no-cache"]
    # A terminal has a size: tqdm draws nothing on a zero-width one.
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=child_fd, env=env)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(main_fd)
    seen = b"".join(chunks).decode(errors="replace")
    assert "pathviz plot-embeddings: UMAP of 300 patches: nearest neighbours" in seen
    # tqdm's bar, naming the stage, redrawn in place
    assert "\rUMAP of 300 patches: epochs:" in seen and "%|" in seen


def test_headless_demo_lists_its_steps(tmp_path):
    """``pathviz demo --headless`` says each step (data, model, UMAP, figures, attributions)."""
    from conftest import run_cli

    done = run_cli("demo", "--headless", "--out", tmp_path / "d", "--progress", "lines")
    assert done.returncode == 0, done.stderr
    steps = [line.removeprefix("pathviz demo: ") for line in done.stderr.splitlines()]
    assert all(line.startswith("pathviz demo: ") for line in done.stderr.splitlines())
    expected = [
        "the demo model's predictions for",
        "writing the patch table and the slide figures",
        "UMAP (3-D) of the demo embeddings",
        "writing the interactive UMAP plot",
        "UMAP (2-D) of the demo embeddings",
        "drawing the",
        "attributions: gradient",
        "attributions: gradcam",
    ]
    positions = [next(i for i, s in enumerate(steps) if s.startswith(e)) for e in expected]
    assert positions == sorted(positions), steps


def test_screenshot_without_a_display_is_one_line(tmp_path):
    from conftest import run_cli

    done = run_cli(
        "demo", "--screenshot", tmp_path / "x.png", env={"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "pathviz demo: error: --screenshot needs a window, but no display found (DISPLAY and "
        "WAYLAND_DISPLAY are unset); run it under xvfb-run, or use --headless for the demo's files"
    ]
    assert not (tmp_path / "x.png").exists()


def test_a_column_of_the_patch_table_asks_for_patches(tmp_path):
    from conftest import run_cli

    emb = _small_embeddings(tmp_path / "emb.parquet")
    done = run_cli("plot-embeddings", "-i", emb, "-o", tmp_path / "u.html", "-a", "y_pred")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"pathviz plot-embeddings: error: -a/--annotations: no column 'y_pred' in {emb}; "
        "to use a column of the patch table, add --patches TABLE"
    ]
    assert not (tmp_path / "u.html").exists()


def test_help_shows_every_default():
    import argparse

    from napari_pathviz.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        text = " ".join(command.format_help().split())
        assert "(default: None)" not in text and "(default: False)" not in text, name
        formatter = command._get_formatter()
        for action in command._actions:
            if action.default in (None, False, [], argparse.SUPPRESS) or not action.help:
                continue
            # Every option with a value of its own shows it (or words for it, "the card's").
            shown = formatter._get_help_string(action)
            assert "%(default)s" in shown or "default" in action.help, (name, action.dest)
    embed = " ".join(commands.choices["plot-embeddings"].format_help().split())
    assert "UMAP neighbours (PathFlowAI's number) (default: 8)" in embed
    assert "(default: euclidean)" in embed and "(default: 0.05)" in embed


# --- the GUI demo: the window first, then the data with progress ----------------------------


def test_gui_demo_opens_the_window_then_loads_with_progress(make_napari_viewer, qtbot):
    from napari.layers import Image, Points

    from napari_pathviz._demo_viewer import (
        DOCK_WIDGETS,
        dock_pathviz_widgets,
        load_demo_into,
        text_overlay,
    )

    viewer = make_napari_viewer()
    widgets = dock_pathviz_widgets(viewer)
    assert set(widgets) == set(DOCK_WIDGETS) and len(viewer.layers) == 0
    reports: list[tuple[float, str]] = []
    loaded: list = []
    load_demo_into(
        viewer,
        widgets,
        on_progress=lambda fraction, message: reports.append((fraction, message)),
        on_loaded=loaded.append,
    )
    # The window is up and says what it is doing while the data load in a thread.
    overlay = text_overlay(viewer)
    assert overlay.visible and overlay.text.startswith("Loading the demo")
    qtbot.waitUntil(lambda: bool(loaded), timeout=600_000)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    messages = [m for _, m in reports]
    assert messages[0] == "opening the demo slide and patches"
    assert any(m.startswith("the demo model's predictions for") for m in messages)
    umap = [m for m in messages if m.startswith("UMAP: ")]
    # Computed stage by stage, or read from the results cache when an earlier test ran it.
    assert umap[-1] == "UMAP: loaded from cache" or umap[:2] == [
        "UMAP: PCA: 64 to 50 dimensions",
        "UMAP: nearest neighbours: exact (all pairs), with the fuzzy simplicial set",
    ]
    assert umap[-1] in ("UMAP: done", "UMAP: loaded from cache")
    assert messages[-1] == "showing the slide, its patches and the UMAP"
    # The layers the demo promises: the slide, its patches with their UMAP coordinates.
    slide_layer, patches_layer = viewer.layers
    assert isinstance(slide_layer, Image) and slide_layer.name == "demo_ihc"
    assert isinstance(patches_layer, Points) and patches_layer.name == "demo_ihc patches"
    assert {"umap_0", "umap_1", "prob_dab_positive"} <= set(patches_layer.features.columns)
    assert np.isfinite(patches_layer.features["umap_0"].to_numpy()).all()
    assert not overlay.visible
    assert viewer.layers.selection.active is patches_layer


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
