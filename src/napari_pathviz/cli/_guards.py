"""The output guard: before any command computes anything, its outputs are checked against its
inputs and against what is already on disk.

- An output never replaces an input: an output that resolves to an input (symlinks, ``..``,
  hard links), lies inside a zarr input, or is a folder that holds an input is refused.
- Two outputs of one command are never the same path.
- An existing output file is replaced only with ``--overwrite``; in a SQLite ``.db`` output only
  the table of the patch size written counts (its other tables are kept). Resumable stores
  (``--store``, ``--attributions-out``, a cohort's output folder) are exempt: reusing one is a
  resume, and the store itself refuses another job's results.
- An output whose suffix the writer cannot produce (``render -o table.csv``), or whose folder
  cannot be created or written, is refused.
- Every output is then claimed for the command's run (:class:`..store_lock.OutputClaim`, a
  ``.NAME.claim`` file beside it created atomically): a second command writing the same output
  at the same time is refused, and the checks run again under the claim.

Every refusal is one line naming the option(s) and the path. Which arguments of a command are
inputs and outputs is declared once, in :data:`COMMAND_PATHS`.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PathvizError
from ..io.tables import SQLITE_SUFFIXES, TABLE_SUFFIXES
from ..io.zarr_io import is_zarr_path

FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
FLAT_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


@dataclass(frozen=True)
class CommandPaths:
    """The argparse ``dest`` names of a command's paths.

    ``inputs``: files or datasets read (a folder input is one dataset, e.g. a zarr slide: nothing
    may be written inside it); ``collections``: folders of inputs (writing next to the slides in
    them is fine); ``outputs``: files written whole, with the suffixes their writer produces;
    ``folders``: folders written whole (refused when they exist, unless ``--overwrite``);
    ``resumable``: folders reused on purpose.
    """

    inputs: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    outputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    folders: tuple[str, ...] = ()
    resumable: tuple[str, ...] = ()


_MODEL_SLIDE_TABLE = ("model", "slide", "patches")
COMMAND_PATHS: dict[str, CommandPaths] = {
    "patches": CommandPaths(inputs=("slide",), outputs={"out": TABLE_SUFFIXES}),
    "convert": CommandPaths(inputs=("slide",), folders=("out",)),
    "render": CommandPaths(inputs=("slide", "patches"), outputs={"out": FIGURE_SUFFIXES}),
    "plot-predictions": CommandPaths(
        inputs=("slide", "predictions"), outputs={"out": FIGURE_SUFFIXES}
    ),
    "plot-embeddings": CommandPaths(
        inputs=("input", "patches", "keys"),
        outputs={
            "output": (".html", ".htm"),
            "coords_out": TABLE_SUFFIXES,
            "summary": (".json",),
        },
    ),
    "plot-image-umap-embeddings": CommandPaths(
        inputs=("embeddings", "patches", "keys"),
        collections=("input",),
        outputs={"output": IMAGE_SUFFIXES},
    ),
    "extract": CommandPaths(
        inputs=(*_MODEL_SLIDE_TABLE, "features", "keys"),
        outputs={"out": TABLE_SUFFIXES},
        resumable=("store",),
    ),
    "shapley-plot": CommandPaths(
        inputs=(*_MODEL_SLIDE_TABLE, "background"),
        outputs={"out": FIGURE_SUFFIXES},
        resumable=("attributions_out",),
    ),
    "gradcam": CommandPaths(
        inputs=_MODEL_SLIDE_TABLE,
        outputs={"out": FIGURE_SUFFIXES},
        resumable=("attributions_out",),
    ),
    "sanity-check": CommandPaths(
        inputs=(*_MODEL_SLIDE_TABLE, "background"), outputs={"out": FLAT_TABLE_SUFFIXES}
    ),
    "demo": CommandPaths(outputs={"screenshot": (".png",)}),
    "export-geojson": CommandPaths(
        inputs=("table", "rows", "slide"), outputs={"out": (".geojson",)}
    ),
    "annotate": CommandPaths(inputs=("table", "geojson", "slide"), outputs={"out": TABLE_SUFFIXES}),
}


# Numeric options by argparse dest: (least, most, what the user reads). Checked for every command
# that has the option, right after parsing, so a bad number is one line before any work starts.
_WHOLE = "a whole number"
NUMBER_RULES: dict[str, tuple[float, float | None, str]] = {
    "batch_size": (1, None, _WHOLE),
    "chunk_size": (1, None, _WHOLE),
    "samples_per_batch": (1, None, _WHOLE),
    "n_samples": (1, None, _WHOLE),
    "patch_size": (1, None, _WHOLE),
    "stride": (1, None, _WHOLE),
    "input_size": (1, None, _WHOLE),
    "max_size": (16, 65536, _WHOLE),
    "canvas": (64, 16384, _WHOLE),  # an RGB canvas of 16384^2 is already 0.8 GB
    "chunk": (16, 65536, _WHOLE),
    "level": (0, None, _WHOLE),
    "workers": (0, 256, _WHOLE),
    "n_workers": (1, None, _WHOLE),
    "n_neighbors": (2, None, _WHOLE),
    "alpha": (0.0, 1.0, "a number"),
    "min_tissue": (0.0, 1.0, "a number"),
    "min_dist": (0.0, 1.0, "a number"),
    "max_background_area": (0.0, 1.0, "a number"),
    "local_smoothing": (0.0, None, "a number"),
    "zoom": (1e-3, 4.0, "a number"),
    "target_mpp": (1e-6, None, "a number"),
    "min_coverage": (1e-6, 1.0, "a number"),
}


def check_numbers(args: argparse.Namespace) -> None:
    """Refuses, in one line naming the option, a number outside what its command can use."""
    labels = getattr(args, "_path_labels", {})
    for dest, (least, most, kind) in NUMBER_RULES.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or value < least or (most is not None and value > most):
            span = f"from {least:g} to {most:g}" if most is not None else f"at least {least:g}"
            raise PathvizError(f"{labels.get(dest, dest)} must be {kind} {span}, got {value:g}")


def install(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``--overwrite`` to every command that writes and ``--verbose`` to all, and records
    each option's spelling for the guard's messages."""
    for name, parser in subparsers.choices.items():
        spec = COMMAND_PATHS.get(name)
        labels = {
            a.dest: "/".join(a.option_strings) or (a.metavar or a.dest).upper()
            for a in parser._actions
        }
        if spec is not None and "--overwrite" not in parser._option_string_actions:
            parser.add_argument(
                "--overwrite",
                action="store_true",
                help="replace existing output files (or the table of this patch size in a "
                ".db); outputs never replace inputs",
            )
        if "--verbose" not in parser._option_string_actions:
            parser.add_argument(
                "--verbose",
                action="store_true",
                help="show other libraries' warnings and log messages",
            )
        parser.set_defaults(_path_labels=labels)


@contextmanager
def claimed_outputs(args: argparse.Namespace) -> Iterator[None]:
    """:func:`check_paths`, then a claim on each output held while the command runs, then the
    checks again: an output another command finished writing meanwhile exists now."""
    from ..store_lock import OutputClaim

    claims = []
    try:
        for label, path in check_paths(args):
            claims.append(OutputClaim(path, label).acquire())
        check_paths(args)
        yield
    finally:
        for claim in reversed(claims):
            claim.release()


def check_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Refuses, in one line, any output of ``args.command`` that would replace an input, another
    output or (without ``--overwrite``) an existing file. Runs before the command does.
    Returns every output (files, folders, resumable stores) as (option, path)."""
    spec = COMMAND_PATHS.get(args.command)
    if spec is None:
        return []
    labels = getattr(args, "_path_labels", {})
    inputs = _named_paths(args, spec.inputs, labels)
    collections = _named_paths(args, spec.collections, labels)
    outputs = _named_paths(args, tuple(spec.outputs), labels)
    folders = _named_paths(args, spec.folders, labels)
    resumable = _named_paths(args, spec.resumable, labels)
    if args.command == "extract":
        inputs, collections, outputs, folders, resumable = _extract_paths(
            args, labels, inputs, outputs, resumable
        )
    if args.command in ("shapley-plot", "gradcam"):
        from .cohort_explain import guarded_paths, is_cohort_args

        if is_cohort_args(args):
            inputs, collections, outputs, resumable = guarded_paths(
                args, labels, inputs, collections, outputs, resumable
            )
    if args.command == "demo":
        folders = []
        outputs += _demo_files(args)
    overwrite = bool(getattr(args, "overwrite", False))
    every_output = outputs + folders + resumable
    _refuse_shared_outputs(every_output)
    for out in every_output:
        _refuse_replacing_inputs(out, inputs, collections, out in folders + resumable)
        _refuse_unwritable(out)
    suffixes = {labels.get(dest, dest): kinds for dest, kinds in spec.outputs.items()}
    for label, path in outputs:
        _check_suffix(label, path, suffixes.get(label, ()))
        _refuse_existing_file(label, path, overwrite, db_table_of(args))
    for label, path in folders:
        if Path(path).exists() and not overwrite:
            raise PathvizError(f"{label}: {path} already exists; pass --overwrite to replace it")
    return every_output


def db_table_of(args: argparse.Namespace) -> str | None:
    """The table a ``.db`` output gets: one per patch size, when the size is known up front."""
    size = getattr(args, "patch_size", None)
    if args.command == "patches" or (args.command == "extract" and not args.patches):
        return str(size or 224)  # the tissue grid's default size
    return str(size) if size else None


def refuse_existing_db_tables(path, names, overwrite: bool, option: str = "-o/--out") -> None:
    """For a ``.db`` output whose patch sizes are known only once the table is read."""
    if overwrite or not str(path).lower().endswith(SQLITE_SUFFIXES) or not Path(path).exists():
        return
    clash = sorted(set(map(str, names)) & set(_sqlite_tables(Path(path), option)))
    if clash:
        raise PathvizError(
            f"{option}: {path} already holds table {', '.join(map(repr, clash))}; pass "
            "--overwrite to replace it (the other tables are kept)"
        )


def _named_paths(args, dests, labels) -> list[tuple[str, str]]:
    found = []
    for dest in dests:
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, ""):
                found.append((labels.get(dest, dest), os.fspath(item)))
    return found


def _extract_paths(args, labels, inputs, outputs, resumable):
    """extract's results store defaults to OUT.store.zarr; in cohort mode (several slides, a
    folder or a list) -o is a resumable folder whose summary and tables must not be inputs."""
    from .inference import is_cohort

    out_label = labels.get("out", "-o/--out")
    if args.features:
        return _head_paths(args, labels, inputs, outputs, resumable)
    if not is_cohort(args.slide):
        if not args.store:
            resumable = resumable + [(f"{out_label} (its store)", f"{args.out}.store.zarr")]
        return inputs, [], outputs, [], resumable
    from ..cohort import WORKER_LOG, find_cohort_slides, slide_key

    slide_label = labels.get("slide", "--slide")
    slides = find_cohort_slides(args.slide)
    folder = Path(args.out)
    inputs = [i for i in inputs if i[0] != slide_label] + [(slide_label, str(s)) for s in slides]
    collections = [(slide_label, s) for s in args.slide if Path(s).is_dir() and s not in slides]
    written = ["summary.csv", WORKER_LOG, "stores", *(f"{slide_key(s)}.parquet" for s in slides)]
    resumable = [(out_label, str(folder / name)) for name in written]
    refuse_folder_holding(out_label, folder, inputs + collections, slide_label)
    return inputs, collections, [], [], resumable


def refuse_folder_holding(label: str, folder, sources, source_label: str) -> None:
    """A cohort's output folder is reused on purpose (a rerun resumes), so it is not among the
    folders refused for existing; it must still never be, or hold, the slides (or feature
    files) it is made from: tables, stores and logs would land among them."""
    for in_label, source in sources:
        if in_label == source_label and (
            _same_file(str(folder), source) or _inside(source, folder)
        ):
            raise PathvizError(
                f"{label} {folder} would hold the input {in_label} {source}: a cohort's output "
                "folder is never its slides' folder; choose another output folder"
            )


def _head_paths(args, labels, inputs, outputs, resumable):
    """extract --features: one file writes OUT (and its .slide.json, checked when written);
    several files or a folder write a table per slide and summary.csv into the folder -o."""
    from ..slide_head import find_feature_files, table_name

    files = find_feature_files(args.features)
    if len(files) == 1 and not Path(args.features[0]).is_dir():
        return inputs, [], outputs, [], resumable
    label, out_label = labels.get("features", "--features"), labels.get("out", "-o/--out")
    folder = Path(args.out)
    inputs = [i for i in inputs if i[0] != label] + [(label, f) for f in files]
    collections = [(label, s) for s in args.features if Path(s).is_dir()]
    written = ["summary.csv", *(table_name(f) for f in files)]
    refuse_folder_holding(out_label, folder, inputs + collections, label)
    return inputs, collections, [], [], [(out_label, str(folder / name)) for name in written]


def _demo_files(args) -> list[tuple[str, str]]:
    """The files the headless demo writes into --out (each refused when it exists)."""
    from ..attribution import PIXEL_METHODS

    if not args.headless and (args.screenshot or _has_display()):
        return []
    names = [
        "patches.csv",
        "slide_patches_annotation.png",
        "slide_patches_prediction.png",
        "embeddings_umap.html",
        "umap_coords.csv",
        "umap_image_mosaic.png",
    ] + [f"attributions_{m}.png" for m in PIXEL_METHODS]
    return [("--out", str(Path(args.out) / name)) for name in names]


def _has_display() -> bool:
    from .demo import _has_display

    return _has_display()


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _same_file(a: str, b: str) -> bool:
    """Equal after resolving symlinks and ``..``, or one file under two names (hard links,
    case-insensitive file systems)."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    real, top = _real(path), _real(folder)
    return real != top and real.startswith(top.rstrip(os.sep) + os.sep)


def _refuse_shared_outputs(outputs: list[tuple[str, str]]) -> None:
    for i, (label_a, a) in enumerate(outputs):
        for label_b, b in outputs[i + 1 :]:
            if _same_file(a, b) or _inside(a, b) or _inside(b, a):
                raise PathvizError(
                    f"{label_a} and {label_b} are the same path ({a}): give each output its own"
                )


def _refuse_replacing_inputs(out, inputs, collections, out_is_folder: bool) -> None:
    label, path = out
    for in_label, source in inputs + collections:
        dataset = os.path.isdir(source) and ((in_label, source) in inputs or is_zarr_path(source))
        if _same_file(path, source):
            what = "is"
        elif dataset and _inside(path, source):
            what = "is inside"
        elif _inside(path, source) and _zarr_between(path, source):
            what, source = "is inside", _zarr_between(path, source)
        elif out_is_folder and _inside(source, path):
            what = "would hold"
        else:
            continue
        raise PathvizError(
            f"{label} {path} {what} the input {in_label} {source}: an output never replaces an "
            "input; choose another output path"
        )


def _zarr_between(path: str, folder: str) -> str | None:
    """The zarr slide inside the folder of slides ``folder`` that holds ``path``, if any."""
    top = Path(_real(folder))
    for parent in Path(_real(path)).parents:
        if parent == top or top not in parent.parents:
            return None
        if is_zarr_path(parent):
            return str(parent)
    return None


def _refuse_unwritable(out: tuple[str, str]) -> None:
    """The output's nearest existing folder must be a folder and writable: a typo or a
    read-only location is reported now, not after the computation."""
    label, path = out
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise PathvizError(f"{label}: cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathvizError(f"{label}: cannot write {path}: {parent} is not writable")


def _check_suffix(label: str, path: str, suffixes: tuple[str, ...]) -> None:
    if suffixes and not path.lower().endswith(suffixes):
        raise PathvizError(
            f"{label}: {path} must end in {', '.join(suffixes)} (the kind of file written)"
        )


def _refuse_existing_file(label: str, path: str, overwrite: bool, db_table: str | None) -> None:
    target = Path(path)
    if target.is_dir():
        raise PathvizError(f"{label}: {path} is a folder; give a file name")
    if overwrite or not target.exists():
        return
    if path.lower().endswith(SQLITE_SUFFIXES):
        if db_table is not None:
            refuse_existing_db_tables(path, [db_table], overwrite, label)
        return  # other patch sizes: checked once the table is read, and by write_table
    raise PathvizError(f"{label}: {path} already exists; pass --overwrite to replace it")


def _sqlite_tables(path: Path, option: str) -> list[str]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    except sqlite3.Error as exc:
        raise PathvizError(
            f"{option}: {path} exists and is not a SQLite database ({exc})"
        ) from None
    return [r[0] for r in rows]
