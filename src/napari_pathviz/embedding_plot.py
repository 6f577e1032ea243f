"""Interactive HTML of a UMAP embedding (plotly), coloured as PathFlowAI's plot_embeddings does:
by slide ID by default, by one annotation's coverage with a colorbar, or by the argmax of several
annotation columns. Hover names the patch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PathvizError
from .render import is_categorical


def colour_values(df: pd.DataFrame, annotations: list[str] | None) -> tuple[pd.Series, bool, str]:
    """(values, categorical, title) for colouring: ID, one column, or the argmax of several."""
    if not annotations:
        return df["ID"].astype(str), True, "ID"
    missing = [a for a in annotations if a not in df.columns]
    if missing:
        raise PathvizError(
            f"-a/--annotations: no column(s) {', '.join(missing)} "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    if len(annotations) == 1:
        column = annotations[0]
        return df[column], is_categorical(df[column]), column
    values = df[annotations].apply(pd.to_numeric, errors="coerce").to_numpy()
    winner = np.asarray(annotations)[np.nanargmax(np.nan_to_num(values, nan=-np.inf), axis=1)]
    return pd.Series(winner, index=df.index), True, "argmax(" + ", ".join(annotations) + ")"


def hover_text(df: pd.DataFrame, values: pd.Series, title: str) -> list[str]:
    return [
        f"{i} x={x} y={y} size={p}<br>{title}: {v}"
        for i, x, y, p, v in zip(df["ID"], df["x"], df["y"], df["patch_size"], values, strict=True)
    ]


def plot_embeddings_html(
    df: pd.DataFrame,
    coords: np.ndarray,
    out: str | os.PathLike,
    annotations: list[str] | None = None,
    title: str = "UMAP of patch embeddings",
) -> Path:
    """Writes a self-contained HTML (plotly.js embedded: opens offline) of the 2-D or 3-D scatter."""
    import plotly.graph_objects as go

    from .io.atomic import atomic_file

    out = Path(out)
    values, categorical, colour_title = colour_values(df, annotations)
    text = np.asarray(hover_text(df, values, colour_title))
    three_d = coords.shape[1] == 3
    scatter = go.Scatter3d if three_d else go.Scattergl
    size = 3 if three_d else 5
    traces = []

    def axes(idx):
        axes_ = {"x": coords[idx, 0], "y": coords[idx, 1]}
        if three_d:
            axes_["z"] = coords[idx, 2]
        return axes_

    if categorical:
        # One trace per group (a legend entry each, click to hide); patches of a slide the
        # slides table lacks have no slide-level value: their own group.
        names = values.astype(object).where(values.notna(), "(none)").astype(str).to_numpy()
        for name in sorted(pd.unique(names)):
            idx = np.flatnonzero(names == name)
            traces.append(
                scatter(
                    **axes(idx),
                    mode="markers",
                    name=name,
                    text=text[idx],
                    hoverinfo="text",
                    marker={"size": size},
                )
            )
    else:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy()
        idx = np.arange(len(df))
        traces.append(
            scatter(
                **axes(idx),
                mode="markers",
                text=text,
                hoverinfo="text",
                marker={
                    "size": size,
                    "color": numbers,
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": colour_title}},
                },
            )
        )
    fig = go.Figure(traces)
    fig.update_layout(
        title=f"{title} ({len(df)} patches), coloured by {colour_title}",
        legend={"title": {"text": colour_title}, "itemsizing": "constant"},
        template="plotly_white",
        margin={"l": 40, "r": 20, "t": 60, "b": 40},  # tight, and room for the axis titles
    )
    names = {"xaxis": "UMAP 1", "yaxis": "UMAP 2", "zaxis": "UMAP 3"}
    if three_d:
        fig.update_layout(scene={k: {"title": {"text": v}} for k, v in names.items()})
    else:
        fig.update_xaxes(title_text=names["xaxis"], automargin=True)
        fig.update_yaxes(title_text=names["yaxis"], automargin=True)
    with atomic_file(out) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return out


def write_coords(df, coords, out, *, overwrite: bool = False) -> Path:
    """The UMAP coordinates with the patch keys, as a table (umap_0, umap_1, ...)."""
    from .io.tables import write_table
    from .patches import KEY_COLUMNS

    table = df[list(KEY_COLUMNS)].reset_index(drop=True).copy()
    for j in range(coords.shape[1]):
        table[f"umap_{j}"] = coords[:, j]
    return write_table(table, out, overwrite=overwrite)
