"""Embedding commands: plot-embeddings and plot-image-umap-embeddings (PathFlowAI's names and
short options)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import PathvizError, PathvizWarning
from ..io.zarr_io import LAYOUTS
from ._common import seed_value, stage_progress, step


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "plot-embeddings",
        help="UMAP of patch embeddings as interactive HTML (PathFlowAI's plot_embeddings)",
    )
    p.add_argument(
        "-i",
        "--input",
        required=True,
        help="embeddings (.parquet/.csv/.npy/.npz/.pkl), or a cohort's: a pathviz extract "
        "cohort folder or a folder of per-slide Parquet files",
    )
    p.add_argument("-o", "--output", required=True, help="output .html")
    p.add_argument(
        "-a",
        "--annotations",
        action="append",
        nargs="+",
        metavar="COL",
        help="colour by this patch or slide-level (--slides) column; several: by the argmax "
        "of them (default: ID)",
    )
    add_cohort_options(p)
    p.add_argument("--components", type=int, choices=(2, 3), default=3, help="UMAP dimensions")
    p.add_argument(
        "--coords-out", help="write the UMAP coordinates with patch keys (.csv/.parquet)"
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="print trustworthiness and k-NN preservation of the embedding",
    )
    p.add_argument(
        "--summary",
        metavar="FILE.json",
        help="write the run's summary as JSON: patches, whether the layout is sampled and its "
        "sample size, trustworthiness and k-NN preservation (k=15)",
    )
    add_embedding_options(p)
    p.set_defaults(func=cmd_plot_embeddings)

    p = sub.add_parser(
        "plot-image-umap-embeddings",
        help="the patches drawn at their 2-D UMAP positions, as a PNG figure with a title "
        "and a key (PathFlowAI's plot_image_umap_embeddings)",
    )
    p.add_argument("-e", "--embeddings", required=True, help="embeddings file")
    p.add_argument(
        "-i",
        "--input",
        required=True,
        help="a slide, or a folder of slides named by ID ({ID}.zarr, {ID}.svs, ...)",
    )
    p.add_argument("-o", "--output", required=True, help="output .png")
    p.add_argument("-z", "--zoom", type=float, default=0.25, help="thumbnail size / patch size")
    p.add_argument("-sc", "--sort_col", help="draw patches in the order of this column")
    p.add_argument(
        "-sm",
        "--sort_mode",
        choices=("asc", "desc"),
        default="asc",
        help="ascending: the largest value is drawn last, on top",
    )
    p.add_argument("--canvas", type=int, default=2048, help="mosaic side in pixels")
    p.add_argument(
        "--color-by",
        help="frame each thumbnail in the colour of this column, with a legend or colorbar "
        "(default: annotation when the table has it, else ID)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the bare canvas (canvas x canvas px, no frames, axes, title or key)",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    add_embedding_options(p)
    p.set_defaults(func=cmd_plot_image_umap_embeddings)


def add_cohort_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--slides",
        metavar="TABLE",
        help="slides table (CSV/Parquet: ID, path, slide-level columns such as site, scanner, "
        "diagnosis) joined to the patches by ID",
    )
    p.add_argument(
        "--slides-dir", metavar="DIR", help="find slides without a path here by ID ({ID}.svs, ...)"
    )
    p.add_argument(
        "--batch-score",
        metavar="COL",
        help="print the kNN-purity batch-effect score of this column (e.g. site)",
    )
    p.add_argument(
        "--batch-within",
        metavar="COL",
        help="also the score within each class of this column (e.g. diagnosis)",
    )
    p.add_argument("--batch-k", type=int, default=15, help="neighbours of the batch score")
    p.add_argument(
        "--batch-space",
        choices=("features", "umap"),
        default="features",
        help="where neighbours are searched: the features (PCA to 50 above 50) or the UMAP",
    )
    p.add_argument(
        "--batch-sample",
        type=int,
        help="query patches of the batch score (default: all up to 20000, else 20000)",
    )


def add_embedding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patches", help="patch table to join (attributes for colouring)")
    p.add_argument("--patch-size", type=int, help="patch size (chooses a PathFlowAI db table)")
    p.add_argument("--keys", help="key table (ID, x, y, patch_size) for a .npy/.npz")
    p.add_argument(
        "--trust-pickle",
        "--trust-model",
        dest="trust_pickle",
        action="store_true",
        help="allow loading a pickle (PathFlowAI's embeddings.pkl): it can run code",
    )
    p.add_argument("-b", "--basename", help="keep this slide's patches only")
    p.add_argument(
        "-rb",
        "--remove_background_annotation",
        metavar="COL",
        help="drop patches covered by this annotation (see -ma)",
    )
    p.add_argument(
        "-ma",
        "--max_background_area",
        type=float,
        default=0.05,
        help="keep a patch when its -rb coverage is <= 1 - this",
    )
    p.add_argument(
        "-nn", "--n_neighbors", type=int, default=8, help="UMAP neighbours (PathFlowAI's number)"
    )
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--metric", default="euclidean", help="UMAP metric")
    p.add_argument(
        "--pca",
        default="auto",
        help="PCA before UMAP: auto (to 50 dims above 50), a number, or off",
    )
    p.add_argument(
        "--random-state", type=seed_value, help="seed (makes umap-learn single-threaded)"
    )
    p.add_argument(
        "--knn",
        choices=("auto", "nndescent", "torch"),
        default="auto",
        help="k-NN graph: torch (exact, GPU when there), nndescent, or auto",
    )
    p.add_argument(
        "--fit-sample",
        type=int,
        metavar="N",
        help="fit UMAP on N sampled patches and place the rest with umap-learn's transform "
        "(default: 100000 above 200000 patches; 0: always fit on every patch)",
    )
    p.add_argument(
        "--full-fit",
        action="store_true",
        help="fit UMAP on every patch, however many (slower: a sampled layout keeps about half "
        "of each patch's true 15 nearest neighbours that a full fit keeps)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")


def embeddings_from_args(args: argparse.Namespace, path: str):
    from ..embedding import EmbeddingSet, load_embeddings, remove_background
    from ..patches import load_patches

    patches = None
    if args.patches:
        step(f"reading the patch table {args.patches}")
        patches = load_patches(args.patches, patch_size=args.patch_size)
    slides = None
    if getattr(args, "slides", None):
        from ..cohort_data import read_slides_table

        step(f"reading the slides table {args.slides}")
        with warnings.catch_warnings():
            warnings.simplefilter("always", PathvizWarning)
            slides = read_slides_table(args.slides, slides_dir=args.slides_dir)
    elif getattr(args, "slides_dir", None):
        raise PathvizError("--slides-dir: give the slides table too (--slides TABLE)")
    step(f"reading the embeddings {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("always", PathvizWarning)  # every dropped-row report, not once
        if os.path.isdir(path):
            es = _cohort_embeddings(args, path, patches)
        else:
            es = load_embeddings(
                path,
                keys=args.keys,
                trust_pickle=args.trust_pickle,
                patches=patches,
                slide_id=args.basename,
                patch_size=args.patch_size,
            )
        if slides is not None:
            from ..cohort_data import attach_slides
            from ..patches import PatchTable

            linked, _ = attach_slides(es.table.df, slides)
            es = EmbeddingSet(PatchTable(linked, es.table.source), es.features, es.report)
    check_columns(args, es, path)
    if args.remove_background_annotation:
        es = remove_background(es, args.remove_background_annotation, args.max_background_area)
    return es


def _cohort_embeddings(args: argparse.Namespace, path: str, patches):
    """A cohort folder (extract's, or per-slide Parquets), joined like a single file."""
    from ..cohort_data import load_cohort_embeddings
    from ..embedding import join_embeddings
    from ..io.embeddings import RawEmbeddings

    cohort = load_cohort_embeddings(path)
    raw = RawEmbeddings(cohort.rows, cohort.features, cohort.source)
    es = join_embeddings(raw, patches, slide_id=args.basename, patch_size=args.patch_size)
    for message in es.report.messages():
        warnings.warn(message, PathvizWarning, stacklevel=2)
    return es


def check_columns(args: argparse.Namespace, es, path: str) -> None:
    """Every column the options name is there before the UMAP runs (minutes, at 100k patches);
    without --patches, the embeddings' own columns are all there is: say so."""
    groups = getattr(args, "annotations", None) or []
    named = [("-a/--annotations", column) for group in groups for column in group]
    for option, attribute in (
        ("--remove_background_annotation", "remove_background_annotation"),
        ("--sort_col", "sort_col"),
        ("--batch-score", "batch_score"),
        ("--batch-within", "batch_within"),
    ):
        if getattr(args, attribute, None):
            named.append((option, getattr(args, attribute)))
    columns = es.table.df.columns
    for option, column in named:
        if column in columns:
            continue
        if not args.patches and not getattr(args, "slides", None):
            raise PathvizError(
                f"{option}: no column {column!r} in {path}; to use a column of the patch "
                "table, add --patches TABLE"
            )
        others = " or ".join(str(t) for t in (args.patches, getattr(args, "slides", None)) if t)
        raise PathvizError(
            f"{option}: no column {column!r} in {path} or {others} "
            f"(columns: {', '.join(map(str, columns))})"
        )


def umap_from_args(args: argparse.Namespace, es, components: int):
    from ..embedding import UMAPParams, umap_embed

    pca = args.pca
    if pca not in ("auto", "off"):
        try:
            pca = int(pca)
        except ValueError:
            raise PathvizError(f"--pca must be auto, off or a number, got {pca!r}") from None
        if pca < 2:
            raise PathvizError(f"--pca must be auto, off or at least 2 dimensions, got {pca}")
    if args.full_fit and args.fit_sample not in (None, 0):
        raise PathvizError(
            f"--full-fit fits every patch; it cannot be combined with --fit-sample "
            f"{args.fit_sample}"
        )
    params = UMAPParams(
        n_components=components,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        metric=args.metric,
        pca=None if pca == "off" else pca,
        random_state=args.random_state,
        fit_sample=0 if args.full_fit else args.fit_sample,
    )
    announce_sample(args.command, params, len(es))
    with stage_progress(f"UMAP of {len(es)} patches") as progress:
        return umap_embed(
            es.features, params, knn=args.knn, use_cache=not args.no_cache, progress=progress
        )


def announce_sample(command: str, params, n_patches: int) -> None:
    """A sampled layout says so on stderr, before the fit, with how to get the full fit
    (always, not only with progress lines: it changes what the plot shows)."""
    from ..embedding_large import fit_sample_size

    size = fit_sample_size(params.fit_sample, n_patches)
    if size is not None:
        print(
            f"pathviz {command}: the UMAP layout is sampled: fitted on {size:,} of "
            f"{n_patches:,} patches, the rest placed by transform (it keeps fewer of each "
            "patch's true nearest neighbours; --quality measures it, --full-fit fits every patch)",
            file=sys.stderr,
        )


def run_summary(args: argparse.Namespace, es, coords) -> dict:
    """The run's summary: patches, sampled (and the sample size), and the layout's quality."""
    from ..embedding import embedding_quality
    from ..embedding_large import fit_sample_size

    size = fit_sample_size(0 if args.full_fit else args.fit_sample, len(es))
    step("trustworthiness and k-NN preservation")
    q = embedding_quality(es.features, coords)
    return {
        "patches": len(es),
        "sampled": size is not None,
        "sample_size": size,
        "trustworthiness": q["trustworthiness"],
        "knn_preservation": q["knn_preservation"],
        "k": q["k"],
        "quality_rows": q["sample"],
    }


def write_summary(summary: dict, out: str) -> str:
    import json

    from ..io.atomic import atomic_file

    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return out


def check_batch_options(args: argparse.Namespace) -> None:
    """The batch-score options, checked before the UMAP (minutes, at 100k patches)."""
    if args.batch_within and not args.batch_score:
        raise PathvizError("--batch-within: give the column to score too (--batch-score COL)")
    if args.batch_k < 1:
        raise PathvizError(f"--batch-k must be positive, got {args.batch_k}")
    if args.batch_sample is not None and args.batch_sample < 1:
        raise PathvizError(f"--batch-sample must be positive, got {args.batch_sample}")


def check_batch_groups(args: argparse.Namespace, df) -> None:
    """--batch-k against the groups' sizes, before the UMAP."""
    from ..batch_effect import check_k

    if not args.batch_score:
        return
    for within in [None] + ([args.batch_within] if args.batch_within else []):
        groups = df[args.batch_score].to_numpy()
        classes = None if within is None else df[within].to_numpy()
        check_k(args.batch_k, groups, classes, column=args.batch_score)


def cmd_plot_embeddings(args: argparse.Namespace) -> int:
    from ..embedding_plot import plot_embeddings_html, write_coords

    check_batch_options(args)
    es = embeddings_from_args(args, args.input)
    check_batch_groups(args, es.table.df)
    coords = umap_from_args(args, es, args.components)
    annotations = [a for group in args.annotations or [] for a in group]
    title = "UMAP of patch embeddings"
    if args.batch_score:
        scores = print_batch_scores(args, es, coords)
        title += "; batch score " + ", ".join(
            f"{s.column}{f' within {s.within}' if s.within else ''} {s.score:.2f}" for s in scores
        )
    print(plot_embeddings_html(es.table.df, coords, args.output, annotations, title=title))
    if args.coords_out:
        print(write_coords(es.table.df, coords, args.coords_out, overwrite=args.overwrite))
    if args.quality or args.summary:
        q = run_summary(args, es, coords)
        if args.quality:
            sampled = (
                f"; sampled layout, fitted on {q['sample_size']} of {q['patches']} patches"
                if q["sampled"]
                else ""
            )
            print(
                f"trustworthiness (k={q['k']}, {q['quality_rows']} patches): "
                f"{q['trustworthiness']:.4f}; k-NN preservation: {q['knn_preservation']:.4f}"
                + sampled
            )
        if args.summary:
            print(write_summary(q, args.summary))
    return 0


def print_batch_scores(args: argparse.Namespace, es, coords) -> list:
    """The batch-effect score line(s): over all patches, then within --batch-within."""
    from ..batch_effect import batch_space, knn_purity

    step(f"batch-effect score of {args.batch_score} ({args.batch_space})")
    points, space = batch_space(es.features, coords, args.batch_space)
    df = es.table.df
    runs = [None] + ([args.batch_within] if args.batch_within else [])
    scores = []
    for within in runs:
        score = knn_purity(
            points,
            df[args.batch_score].to_numpy(),
            k=args.batch_k,
            within=None if within is None else df[within].to_numpy(),
            sample=args.batch_sample,
            random_state=0 if args.random_state is None else args.random_state,
            column=args.batch_score,
            within_column=within,
            space=space,
        )
        print(score.as_line())
        print("\n".join(score.group_lines()))
        scores.append(score)
    return scores


def cmd_plot_image_umap_embeddings(args: argparse.Namespace) -> int:
    from ..io.atomic import save_image
    from ..mosaic import (
        find_slides,
        mosaic_colour_column,
        mosaic_thumb,
        render_mosaic,
        umap_mosaic,
    )
    from ..patches import PatchTable

    es = embeddings_from_args(args, args.embeddings)
    slides = find_slides(args.input, es.table.df["ID"].unique(), args.layout)
    for slide_id, slide in slides.items():
        rows = es.table.df[es.table.df["ID"] == slide_id]
        PatchTable(rows, es.table.source).check_inside(slide.height, slide.width)
    coords = umap_from_args(args, es, 2)
    step(f"drawing {len(es)} patches into the mosaic")
    mosaic = umap_mosaic(
        slides,
        es.table,
        coords,
        zoom=args.zoom,
        canvas=args.canvas,
        sort_col=args.sort_col,
        sort_mode=args.sort_mode,
        border=0 if args.raw else max(1, round(mosaic_thumb(es.table, args.zoom) / 24)),
        color_by=None if args.raw else mosaic_colour_column(es.table.df, args.color_by),
    )
    if args.raw:
        print(save_image(mosaic.image, args.output))
    else:
        print(render_mosaic(mosaic, args.output))
    return 0
