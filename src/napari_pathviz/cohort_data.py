"""A cohort as data: the slides table and the embeddings of every patch of every slide.

A cohort is a **slides table** (CSV/Parquet: ``ID``, ``path``, and any slide-level columns such
as site, scanner, stain batch, diagnosis, split) plus the patch embeddings of its slides, keyed
by the same ``ID`` the single-slide views use, so that one scatter can hold a whole study and
link any point back to its slide.

Embeddings come from PathFlowAI's ``embeddings.pkl`` (a pickle: trusted only when the caller
says so), a ``pathviz extract`` cohort output folder (``summary.csv`` naming one Parquet table
per slide), a folder of per-slide Parquet files, or one Parquet with an ``ID`` column. Parquet
is read with column projection (the feature columns, the key columns and the columns asked for,
nothing else) into one float32 matrix allocated once and filled file by file, batch by batch:
a 1M x 512 cohort takes its 2 GB of features and little more.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PathvizError, PathvizWarning
from .patches import KEY_COLUMNS

SLIDES_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUMMARY = "summary.csv"
_BATCH_ROWS = 16_384  # rows converted at a time: 32 MB of float32 at 512 features
_COLUMN_VALUES = 64 << 20  # feature values decoded at a time: 256 MB of float32


def _some(values, limit: int = 5) -> str:
    values = [str(v) for v in values]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


# --------------------------------------------------------------------------- the slides table


@dataclass(frozen=True)
class SlidesTable:
    """A validated slides table: ``frame`` has ``ID`` (text, unique), ``path`` (an absolute
    path as text, or None when the slide's file is not known) and the slide-level columns."""

    frame: pd.DataFrame
    source: str

    @property
    def slide_columns(self) -> list[str]:
        """The slide-level columns (every column but ``ID`` and ``path``)."""
        return [c for c in self.frame.columns if c not in ("ID", "path")]

    @property
    def ids(self) -> list[str]:
        return self.frame["ID"].tolist()

    def path_of(self, slide_id: str) -> str | None:
        """The slide's file, or None (not in the table, or no file known)."""
        hit = self.frame.loc[self.frame["ID"] == str(slide_id), "path"]
        return hit.iloc[0] if len(hit) else None

    def __len__(self) -> int:
        return len(self.frame)


def read_slides_table(
    path: str | os.PathLike, slides_dir: str | os.PathLike | None = None
) -> SlidesTable:
    """Reads and checks a slides table (CSV, TSV or Parquet).

    ``path`` values relative to the table's folder are made absolute. With ``slides_dir``, a
    slide without a path (no ``path`` column, or an empty cell) is found in that folder by its
    ID: ``{ID}.svs``, ``{ID}.zarr``, ... (the suffixes ``pathviz extract`` knows); one that is
    not there keeps no path (a warning counts them). A path that does not exist is kept: the
    viewer reports it when the slide is opened. Errors, one line naming the file: no ``ID``
    column, no ``path`` column and no ``slides_dir``, no rows, empty or duplicate IDs (named).
    """
    source = str(path)
    if slides_dir is not None and not Path(slides_dir).expanduser().is_dir():
        raise PathvizError(f"--slides-dir {slides_dir}: no such folder (slides of {source})")
    frame = _read_frame(source)
    if "ID" not in frame.columns:
        raise PathvizError(
            f"{source}: no ID column (a slides table has ID, path and slide-level columns; "
            f"found {_some(frame.columns, 8) or 'none'})"
        )
    if "path" not in frame.columns and slides_dir is None:
        raise PathvizError(
            f"{source}: no path column; add one, or give the folder of the slides "
            "(--slides-dir) to find each slide by its ID"
        )
    if not len(frame):  # nothing to join or run on: not a silent success
        raise PathvizError(f"{source}: the slides table has no rows (no slides)")
    ids = frame["ID"].astype("string").str.strip()
    empty = np.flatnonzero(ids.isna().to_numpy() | (ids == "").fillna(True).to_numpy())
    if len(empty):
        raise PathvizError(f"{source}: row {int(empty[0]) + 1}: empty ID")
    frame["ID"] = ids.astype(object)
    duplicated = frame["ID"][frame["ID"].duplicated()].unique()
    if len(duplicated):
        raise PathvizError(f"{source}: duplicate slide IDs: {_some(duplicated)}")
    paths = _slide_paths(frame, Path(source).parent, slides_dir, source)
    frame["path"] = pd.Series(paths, index=frame.index, dtype=object)  # None, not NaN
    columns = ["ID", "path", *[c for c in frame.columns if c not in ("ID", "path")]]
    return SlidesTable(frame[columns].reset_index(drop=True), source)


def _read_frame(source: str) -> pd.DataFrame:
    if not os.path.isfile(source):
        raise PathvizError(f"{source}: no such file")
    lower = source.lower()
    if not lower.endswith(SLIDES_TABLE_SUFFIXES):
        raise PathvizError(f"{source}: not a slides table ({', '.join(SLIDES_TABLE_SUFFIXES)})")
    try:
        if lower.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(source)
        sep = "\t" if lower.endswith(".tsv") else ","
        # IDs and paths stay text: a slide named "007" keeps its name.
        return pd.read_csv(source, sep=sep, dtype={"ID": str, "path": str})
    except Exception as exc:
        raise PathvizError(f"{source}: not a readable table ({type(exc).__name__}: {exc})") from exc


def _slide_paths(frame: pd.DataFrame, folder: Path, slides_dir, source: str) -> list:
    given = frame["path"] if "path" in frame.columns else pd.Series([None] * len(frame))
    found = _slides_by_id(slides_dir, source) if slides_dir is not None else {}
    paths, unresolved = [], []
    for slide_id, value in zip(frame["ID"], given, strict=True):
        text = None if pd.isna(value) else str(value).strip()
        if text:
            p = Path(text).expanduser()
            paths.append(os.path.abspath(p if p.is_absolute() else folder / p))
        elif slide_id in found:
            paths.append(found[slide_id])
        else:
            paths.append(None)
            unresolved.append(slide_id)
    if unresolved:
        where = f"no file in {slides_dir}" if slides_dir is not None else "no path"
        warnings.warn(
            f"{source}: {len(unresolved)} of {len(frame)} slides have {where} "
            f"({_some(unresolved)}); their patches are shown but cannot open a slide",
            PathvizWarning,
            stacklevel=3,
        )
    return paths


def _slides_by_id(slides_dir, source: str) -> dict[str, str]:
    """{ID: path} of the slides in a folder (not searched further down); two files of one
    ID (``s.svs`` and ``s.zarr``) cannot say which is meant: an error naming both."""
    from .cohort import _is_slide
    from .slide import slide_id_from_path

    folder = Path(slides_dir).expanduser()
    found: dict[str, str] = {}
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not _is_slide(child):
            continue
        slide_id = slide_id_from_path(child)
        if slide_id in found:
            raise PathvizError(
                f"--slides-dir {slides_dir}: two slides of ID {slide_id!r} "
                f"({Path(found[slide_id]).name}, {child.name}); give the path column"
            )
        found[slide_id] = os.path.abspath(child)
    return found


# --------------------------------------------------------------------------- linking patches


@dataclass
class CohortLinkReport:
    """How the patches met the slides table."""

    source: str
    n_patches: int = 0
    n_linked: int = 0
    missing_ids: list[str] = field(default_factory=list)  # in the embeddings, not the table
    n_patches_missing: int = 0
    no_path_ids: list[str] = field(default_factory=list)  # in the table, with no file known
    slides_without_patches: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # slide column -> its new name

    def messages(self) -> list[str]:
        out = []
        if self.missing_ids:
            out.append(
                f"{self.source}: {self.n_patches_missing} of {self.n_patches} patches, from "
                f"{len(self.missing_ids)} slides, have an ID the slides table lacks "
                f"({_some(self.missing_ids)}); they are kept but cannot open a slide"
            )
        if self.slides_without_patches:
            out.append(
                f"{self.source}: {len(self.slides_without_patches)} slides have no patches "
                f"in the embeddings ({_some(self.slides_without_patches)})"
            )
        for old, new in self.renamed.items():
            out.append(f"{self.source}: slide column {old!r} is {new!r} (a patch column has it)")
        return out


def attach_slides(rows: pd.DataFrame, slides: SlidesTable) -> tuple[pd.DataFrame, CohortLinkReport]:
    """The patch ``rows`` with the slide-level columns of their slide (by ``ID``, in row order)
    and ``linkable``: True where the slide is in the table and its file is known. Rows of IDs
    the table lacks are kept (slide columns empty, not linkable); the report counts them and
    the slides without patches, and each of its messages is also a PathvizWarning."""
    report = CohortLinkReport(slides.source, n_patches=len(rows))
    table = slides.frame
    codes = pd.Index(table["ID"]).get_indexer(rows["ID"].astype(str))  # -1: not in the table
    known = codes >= 0
    out = rows.copy()
    for column in slides.slide_columns:
        name = column
        if name in out.columns:
            name = f"slide_{column}"
            report.renamed[column] = name
        values = table[column]
        if not known.all():  # missing slides read NaN (None for text)
            values = pd.concat([values, pd.Series([None], dtype=values.dtype)], ignore_index=True)
        out[name] = values.to_numpy()[np.where(known, codes, len(table))]
    has_path = table["path"].notna().to_numpy()
    out["linkable"] = known & has_path[np.where(known, codes, 0)]
    report.n_linked = int(out["linkable"].sum())
    report.n_patches_missing = int((~known).sum())
    if report.n_patches_missing:
        report.missing_ids = sorted(pd.unique(rows["ID"].astype(str)[~known]))
    seen = np.zeros(len(table), dtype=bool)
    seen[np.unique(codes[known])] = True
    report.slides_without_patches = table["ID"][~seen].tolist()
    report.no_path_ids = table["ID"][~has_path].tolist()
    for message in report.messages():
        warnings.warn(message, PathvizWarning, stacklevel=2)
    return out, report


# --------------------------------------------------------------------------- cohort embeddings


@dataclass
class CohortEmbeddings:
    """``features[i]`` (float32, C-contiguous) is the patch of ``rows`` row i (``ID``, ``x``,
    ``y``, ``patch_size`` and the patch columns kept)."""

    features: np.ndarray
    rows: pd.DataFrame
    source: str

    def __len__(self) -> int:
        return len(self.features)


def load_cohort_embeddings(
    source: str | os.PathLike, *, trust_pickle: bool = False, columns=None
) -> CohortEmbeddings:
    """The embeddings of a cohort, from a ``pathviz extract`` cohort folder (its
    ``summary.csv``), a folder of per-slide Parquet files (a file without an ``ID`` column
    is the slide its name says), one Parquet with an ``ID`` column, or PathFlowAI's
    ``embeddings.pkl`` (needs ``trust_pickle``). ``columns``: the patch columns to keep
    besides the keys (None: every non-feature column). Rows with NaN/inf features are dropped
    (a warning counts them)."""
    path = Path(source).expanduser()
    text = str(source)
    if path.is_dir():
        files, ids = _folder_tables(path)
        return _read_parquets(files, ids, columns, text)
    if not path.exists():
        raise PathvizError(f"{text}: no such file or directory")
    if text.lower().endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        if "ID" not in _schema(path, pq).names:
            raise PathvizError(
                f"{text}: no ID column; a cohort's embeddings name each patch's slide "
                "(or give a folder of per-slide Parquet files)"
            )
        return _read_parquets([path], [None], columns, text)
    return _read_other(text, trust_pickle, columns)


def _read_other(text: str, trust_pickle: bool, columns) -> CohortEmbeddings:
    """PathFlowAI's pickle (or a CSV with ``ID``) through the single-file reader."""
    from .io.embeddings import read_embeddings

    raw = read_embeddings(text, trust_pickle=trust_pickle)
    rows = raw.rows
    _require_keys(rows.columns, text)
    if columns is not None:
        _require_columns(columns, rows.columns, text)
        rows = rows[[*KEY_COLUMNS, *[c for c in columns if c not in KEY_COLUMNS]]]
    rows = rows.assign(ID=rows["ID"].astype(str))
    finite = _finite_rows(raw.features)
    features = np.ascontiguousarray(raw.features[finite] if not finite.all() else raw.features)
    _warn_dropped(int((~finite).sum()), text)
    return CohortEmbeddings(features, rows[finite].reset_index(drop=True), text)


def _folder_tables(folder: Path) -> tuple[list[Path], list[str | None]]:
    """(tables, their slide IDs or None) of a cohort output folder or a folder of Parquets."""
    summary = folder / SUMMARY
    if summary.is_file():
        done = pd.read_csv(summary, dtype={"ID": str, "output": str})
        ok = done[done["status"].isin(("done", "skipped"))] if "status" in done else done
        failed = len(done) - len(ok)
        if failed:
            warnings.warn(
                f"{summary}: {failed} of {len(done)} slides failed in the extract run; "
                "their patches are not in the cohort",
                PathvizWarning,
                stacklevel=4,
            )
        files = [Path(o) if Path(o).is_absolute() else folder / o for o in ok["output"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise PathvizError(f"{summary}: tables listed but missing: {_some(missing)}")
        return files, [None] * len(files)
    files = sorted(f for f in folder.iterdir() if f.name.lower().endswith(PARQUET_SUFFIXES))
    if not files:
        raise PathvizError(
            f"{folder}: no {SUMMARY} (a pathviz extract cohort) and no Parquet files"
        )
    from .slide import slide_id_from_path

    return files, [slide_id_from_path(f.name.rsplit(".", 1)[0]) for f in files]


def _schema(path: Path, pq):
    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise PathvizError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from exc


def _require_keys(names, where: str) -> None:
    missing = [c for c in KEY_COLUMNS if c not in names]
    if missing:
        raise PathvizError(f"{where}: no {', '.join(missing)} column (patch keys)")


def _require_columns(columns, names, where: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise PathvizError(f"{where}: no column {_some(missing)}")


def _finite_rows(features: np.ndarray) -> np.ndarray:
    keep = np.ones(len(features), dtype=bool)
    for start in range(0, len(features), _BATCH_ROWS):  # no N x D temporary
        keep[start : start + _BATCH_ROWS] = np.isfinite(features[start : start + _BATCH_ROWS]).all(
            1
        )
    return keep


def _warn_dropped(n: int, where: str) -> None:
    if n:
        warnings.warn(
            f"{where}: dropped {n} patches with NaN or infinite features",
            PathvizWarning,
            stacklevel=4,
        )


@dataclass
class _Plan:
    """What is read of each Parquet file: its feature columns (one width for all) and rows."""

    files: list[Path]
    ids: list[str | None]
    features: list[list[str]]
    row_columns: list[list[str]]
    n_rows: list[int]


def _plan_parquets(files, ids, columns, where: str) -> _Plan:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io.embeddings import feature_columns

    plan = _Plan(list(files), list(ids), [], [], [])
    wanted = None if columns is None else [c for c in columns if c not in KEY_COLUMNS]
    seen: set = set()
    for path, slide_id in zip(files, ids, strict=True):
        schema = _schema(path, pq)
        feats = feature_columns(schema.names)
        if not feats:
            raise PathvizError(f"{path}: no feature columns (feat_0, feat_1, ... or 0, 1, ...)")
        if plan.features and len(feats) != len(plan.features[0]):
            raise PathvizError(
                f"{path}: {len(feats)} features, but {plan.files[0]} has "
                f"{len(plan.features[0])}; one cohort, one model"
            )
        for name in feats:
            kind = schema.field(name).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                raise PathvizError(f"{path}: feature column {name} is {kind}, not numbers")
        names = [n for n in schema.names if n not in set(feats)]
        _require_keys([*names, *(["ID"] if slide_id is not None else [])], str(path))
        keep = [n for n in names if n in KEY_COLUMNS or wanted is None or n in wanted]
        seen.update(keep)
        plan.features.append(feats)
        plan.row_columns.append(keep)
        plan.n_rows.append(pq.read_metadata(path).num_rows)
    if wanted:
        _require_columns(wanted, seen, where)
    return plan


def _row_group_fillers(parquet, feats: list[str]):
    """(rows, fill(block)) per row group: ``fill`` writes the group's feature columns into a
    float32 block a few columns at a time, so a file written as one row group of a million rows
    (pandas' default) never decodes all its features at once (pyarrow's batch iterator does:
    measured 5.6 GB for 1M x 512 float32 against 2.0 GB for the matrix itself)."""
    step = max(1, _COLUMN_VALUES // max(1, parquet.metadata.num_rows))
    for group in range(parquet.num_row_groups):
        n_rows = parquet.metadata.row_group(group).num_rows

        def fill(block, group=group):
            for first in range(0, len(feats), step):
                names = feats[first : first + step]
                table = parquet.read_row_group(group, columns=names)
                for j in range(len(names)):
                    column = table.column(j).to_numpy()
                    block[:, first + j] = column
                del table

        yield n_rows, fill


def _read_parquets(files, ids, columns, where: str) -> CohortEmbeddings:
    """Reads only the planned columns; the float32 matrix is allocated once (all rows) and
    filled batch by batch, rows with NaN/inf features compacted away in place."""
    import pyarrow.parquet as pq

    plan = _plan_parquets(files, ids, columns, where)
    width = len(plan.features[0])
    features = np.empty((sum(plan.n_rows), width), dtype=np.float32)
    frames, cursor, dropped = [], 0, 0
    for path, slide_id, feats, row_columns in zip(
        plan.files, plan.ids, plan.features, plan.row_columns, strict=True
    ):
        keep_parts = []
        for n_rows, fill in _row_group_fillers(pq.ParquetFile(path), feats):
            block = features[cursor : cursor + n_rows]
            fill(block)
            finite = np.ones(n_rows, dtype=bool)
            for start in range(0, n_rows, _BATCH_ROWS):  # no n x D boolean temporary
                part = block[start : start + _BATCH_ROWS]
                finite[start : start + _BATCH_ROWS] = np.isfinite(part).all(axis=1)
            if not finite.all():
                kept = int(finite.sum())
                block[:kept] = block[finite]
                dropped += len(finite) - kept
            cursor += int(finite.sum())
            keep_parts.append(finite)
        rows = pq.read_table(path, columns=row_columns).to_pandas()
        if keep_parts and not all(k.all() for k in keep_parts):
            rows = rows[np.concatenate(keep_parts)]
        if "ID" not in rows.columns:
            rows.insert(0, "ID", slide_id)
        frames.append(rows.reset_index(drop=True))
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    rows["ID"] = rows["ID"].astype(str)
    front = list(KEY_COLUMNS)
    rows = rows[front + [c for c in rows.columns if c not in front]]
    _warn_dropped(dropped, where)
    return CohortEmbeddings(features[:cursor], rows, where)
