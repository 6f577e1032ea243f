"""The ``pathviz`` command: the headless face of the plugin.

Every command is a thin layer over the core. Bad input ends with one line on stderr and exit
status 2; nothing here imports napari unless the demo opens a window.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import PathvizError, PathvizWarning
from .io.zarr_io import LAYOUTS

EXIT_BAD_INPUT = 2


def _add_slide_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide", help="slide file or folder (zarr, OME-Zarr, SVS, TIFF, OME-TIFF, NDPI)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="stored axis order of a single zarr array; xyc = PathFlowAI's {ID}.zarr "
        "(default: auto)",
    )
    p.add_argument(
        "--allow-untiled",
        action="store_true",
        help="read a TIFF stored in strips (slow: whole strips are decoded)",
    )
    p.add_argument(
        "--allow-missing-chunks",
        action="store_true",
        help="read missing zarr chunks as blank instead of failing",
    )


def _open(args: argparse.Namespace):
    from .slide import open_slide

    return open_slide(
        args.slide,
        args.layout,
        allow_untiled=args.allow_untiled,
        allow_missing_chunks=args.allow_missing_chunks,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathviz",
        description="See what a patch classifier sees on a whole-slide image (headless tools of "
        "the napari-pathviz plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo",
        help="run the demo: napari with the demo slide, or files headless",
        description="Builds the demo data (a real IHC image with labelled patches "
        "and a small trained model) and opens it in napari; without a "
        "display, or with --headless, writes figures and tables.",
    )
    p.add_argument("--headless", action="store_true", help="write files instead of opening napari")
    p.add_argument("--out", default="pathviz-demo", help="output folder for headless results")
    p.add_argument(
        "--screenshot", metavar="PNG", help="open napari, save a screenshot of the window and exit"
    )
    p.add_argument("--data-dir", help="where the demo data are built (default: user cache)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="describe a slide: format, levels, chunks, microns per pixel")
    _add_slide_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="read every stored chunk of a slide; report the first fault")
    _add_slide_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "patches",
        help="generate a patch grid over the tissue of a slide",
        description="Detects tissue on a low-resolution level (Otsu on HSV "
        "saturation) and writes the patches that cover enough of it.",
    )
    _add_slide_options(p)
    p.add_argument("-o", "--out", required=True, help="output table (.parquet, .csv, .db)")
    p.add_argument("--patch-size", type=int, default=224, help="patch side in level-0 pixels")
    p.add_argument("--stride", type=int, help="grid spacing (default: the patch size)")
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep patches whose tissue fraction is at least this (0-1)",
    )
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("convert", help="convert a slide to a chunked, compressed OME-Zarr pyramid")
    _add_slide_options(p)
    p.add_argument("out", help="output .zarr folder (must not exist)")
    p.add_argument("--chunk", type=int, default=512, help="chunk side in pixels")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "render", help="PNG of a slide thumbnail with its patches coloured by a column"
    )
    _add_slide_options(p)
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--patches", help="patch table (.parquet, .csv, PathFlowAI .db)")
    p.add_argument("--patch-size", type=int, help="patch size (chooses a PathFlowAI db table)")
    p.add_argument(
        "--slide-id",
        help="keep this slide's rows (default: the slide's basename when the table has it)",
    )
    p.add_argument("--color-by", help="column to colour patches by")
    p.add_argument("--max-size", type=int, default=1600, help="thumbnail size in pixels")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "plot-embeddings",
        help="UMAP of patch embeddings as interactive HTML (PathFlowAI's plot_embeddings)",
    )
    p.add_argument("-i", "--input", required=True, help="embeddings (.parquet/.csv/.npy/.npz/.pkl)")
    p.add_argument("-o", "--output", required=True, help="output .html")
    p.add_argument(
        "-a",
        "--annotations",
        action="append",
        nargs="+",
        metavar="COL",
        help="colour by this column; several: by the argmax of them (default: ID)",
    )
    p.add_argument("--components", type=int, choices=(2, 3), default=3, help="UMAP dimensions")
    p.add_argument(
        "--coords-out", help="write the UMAP coordinates with patch keys (.csv/.parquet)"
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="print trustworthiness and k-NN preservation of the embedding",
    )
    _add_embedding_options(p)
    p.set_defaults(func=cmd_plot_embeddings)

    p = sub.add_parser(
        "plot-image-umap-embeddings",
        help="the patches drawn at their 2-D UMAP positions, as a PNG "
        "(PathFlowAI's plot_image_umap_embeddings)",
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
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    _add_embedding_options(p)
    p.set_defaults(func=cmd_plot_image_umap_embeddings)

    p = sub.add_parser(
        "extract",
        help="predictions and embeddings of a model for every patch of a slide",
        description="Reads every patch (from --patches, or a tissue grid), runs the model in "
        "batches (reads prefetched in threads; GPU when there) and writes one row per patch: "
        "ID, x, y, patch_size, prob_{i}, y_pred, feat_{j}. Finished batches are kept in the "
        "results store (--store), so a rerun resumes.",
    )
    _add_model_options(p)
    p.add_argument(
        "--slide",
        required=True,
        nargs="+",
        help="a slide; or, for a cohort, several slides, a folder of slides, or a "
        ".txt file listing them (then -o is an output folder)",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    p.add_argument("--patches", help="patch table (default: a tissue grid of --patch-size)")
    p.add_argument(
        "--patch-size",
        type=int,
        help="tissue-grid patch size (default 224); with --patches, keeps that size",
    )
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue grid threshold")
    p.add_argument("-o", "--out", required=True, help="output table (.parquet or .csv)")
    p.add_argument("--store", help="results store for resuming (default: OUT + .store.zarr)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per model call")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=2, help="threads reading patches ahead")
    p.add_argument("--level", type=int, default=0, help="pyramid level to read patches from")
    p.add_argument(
        "--target-mpp",
        type=float,
        help="read from the level closest to this many microns per pixel (needs the "
        "slide's own calibration); overrides --level",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the GPU")
    p.add_argument("--no-embeddings", action="store_true", help="predictions only")
    p.add_argument(
        "--scheduler",
        help="cohort: address of an existing dask cluster "
        "(default: a LocalCluster on this machine)",
    )
    p.add_argument(
        "--n-workers",
        type=int,
        help="cohort: LocalCluster workers (default: one per GPU, else one)",
    )
    p.add_argument("--chunk-size", type=int, help="cohort: patches per task (default: a slide)")
    p.add_argument(
        "--keep-stores",
        action="store_true",
        help="cohort: keep each slide's results store after its table is written",
    )
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "plot-predictions",
        help="PNG of the slide thumbnail with a prediction heatmap blended (PathFlowAI's "
        "plot_predictions)",
    )
    p.add_argument("--slide", required=True, help="slide file or folder")
    p.add_argument("-p", "--predictions", required=True, help="table from pathviz extract")
    p.add_argument("--column", default=None, help="column to show (default: the last prob_*)")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    p.set_defaults(func=cmd_plot_predictions)

    for name, helptext in (
        (
            "shapley-plot",
            "SHAP expected gradients or DeepLIFT for patches, as a gallery PNG "
            "(PathFlowAI's shapley_plot)",
        ),
        ("gradcam", "Grad-CAM / Grad-CAM++ for patches, as a gallery PNG"),
        (
            "sanity-check",
            "model-randomisation test of an attribution method (Adebayo et al. 2018): "
            "Spearman correlation of the maps as the weights are randomised from the top down",
        ),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_model_options(p)
        p.add_argument("--slide", required=True, help="slide file or folder")
        p.add_argument("--layout", choices=LAYOUTS, default="auto")
        p.add_argument("--patches", required=True, help="patch table")
        p.add_argument("--patch-size", type=int, help="patch size (a PathFlowAI db table)")
        p.add_argument("--ids", type=int, nargs="+", help="table rows to explain")
        p.add_argument(
            "--top",
            nargs=2,
            metavar=("N", "COL"),
            help="explain the N patches with the highest COL",
        )
        p.add_argument(
            "-bs",
            "--batch_size",
            type=int,
            default=16,
            help="patches explained when neither --ids nor --top is given (drawn at "
            "random, seeded), and the background size",
        )
        p.add_argument(
            "-p",
            "--output",
            choices=("none", "sigmoid", "softmax"),
            default="none",
            help="explain the logit, or the probability after sigmoid/softmax",
        )
        p.add_argument(
            "--target",
            default="predicted",
            help="class to explain: predicted (default), each (every class) or an index",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        p.add_argument(
            "--per-patch-scale",
            action="store_true",
            help="scale each overlay on its own (default: one shared scale)",
        )
        p.add_argument(
            "-o",
            "--out",
            required=True,
            help="output CSV" if name == "sanity-check" else "output PNG",
        )
        if name != "gradcam":  # the references of gradient and deep
            p.add_argument(
                "--background",
                help="reference patches: a patch table of this slide, or a .npy of (N, H, W, 3) "
                "uint8 images (default: -bs random patches of --patches)",
            )
        if name == "sanity-check":
            p.add_argument(
                "-mth",
                "--method",
                choices=("gradient", "deep", "gradcam", "gradcampp"),
                default="gradient",
            )
            p.add_argument(
                "-ns", "--n_samples", type=int, default=100, help="samples per patch (gradient)"
            )
            p.add_argument("-l", "--local_smoothing", type=float, default=0.0)
            p.add_argument("--layer", help="Grad-CAM layer (default: the last conv block)")
            p.set_defaults(func=cmd_sanity_check)
            continue
        if name == "shapley-plot":
            p.add_argument("-mth", "--method", choices=("gradient", "deep"), default="gradient")
            p.add_argument(
                "-ns", "--n_samples", type=int, default=400, help="samples per patch (gradient)"
            )
            p.add_argument(
                "-l",
                "--local_smoothing",
                type=float,
                default=0.0,
                help="std of the noise added to each sample (gradient)",
            )
            p.add_argument(
                "--samples-per-batch",
                type=int,
                default=None,
                help="model inputs per forward/backward pass (default 256 on a GPU, 64 on "
                "the CPU; halved on out-of-memory)",
            )
            p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
            p.add_argument("--channels-last", action="store_true", help="channels_last memory")
        else:
            p.add_argument("--method", choices=("gradcam", "gradcampp"), default="gradcam")
            p.add_argument("--layer", help="module to explain (default: the last conv block)")
        p.add_argument(
            "--attributions-out",
            help="zarr store the maps are written to, chunk by chunk; a rerun of the same "
            "job resumes it (default: a store in the results cache)",
        )
        p.add_argument(
            "--chunk-size", type=int, default=16, help="patches per stored chunk (resume unit)"
        )
        p.set_defaults(func=cmd_explain)
    return parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="TorchScript, state dict, or pickle")
    p.add_argument("--factory", help="architecture for a state dict: package.module:function")
    p.add_argument("--factory-kwargs", default="{}", help="JSON keyword arguments of --factory")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled model (PathFlowAI's): it can run code",
    )
    p.add_argument("--input-size", type=int, help="resize (or crop) patches to this side")
    p.add_argument("--resize-mode", choices=("resize", "crop"), default="resize")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean on [0, 1] inputs")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std")
    p.add_argument(
        "--activation",
        choices=("auto", "none", "sigmoid", "softmax"),
        default="auto",
        help="output activation (auto: softmax, sigmoid for 1 output)",
    )
    p.add_argument(
        "--feature-layer",
        help="module whose output is the embedding (default: the input of the last Linear)",
    )


def _add_embedding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patches", help="patch table to join (attributes for colouring)")
    p.add_argument("--patch-size", type=int, help="patch size (chooses a PathFlowAI db table)")
    p.add_argument("--keys", help="key table (ID, x, y, patch_size) for a .npy/.npz")
    p.add_argument(
        "--trust-pickle",
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
    p.add_argument("-nn", "--n_neighbors", type=int, default=15, help="UMAP neighbours")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--metric", default="euclidean", help="UMAP metric")
    p.add_argument(
        "--pca",
        default="auto",
        help="PCA before UMAP: auto (to 50 dims above 50), a number, or off",
    )
    p.add_argument("--random-state", type=int, help="seed (makes umap-learn single-threaded)")
    p.add_argument(
        "--knn",
        choices=("auto", "nndescent", "torch"),
        default="auto",
        help="k-NN graph: torch (exact, GPU when there), nndescent, or auto",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command)
            return int(args.func(args) or 0)
    except PathvizError as err:
        print(f"pathviz {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pathviz {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings(command: str):
    """Our warnings as one stderr line each; other libraries' as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PathvizWarning):
            print(f"pathviz {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def cmd_info(args: argparse.Namespace) -> int:
    print(_open(args).describe())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .slide_check import check_slide

    slide = _open(args)
    with _progress_bar("chunks") as progress:
        n = check_slide(slide, progress=progress)
    print(f"{args.slide}: {n} chunks read, all present and readable")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from .io.tables import write_table
    from .tissue import tissue_grid

    slide = _open(args)
    table = tissue_grid(slide, args.patch_size, args.stride, args.min_tissue)
    write_table(table.df, args.out)
    print(f"{args.out}: {len(table)} patches of {args.patch_size} px on {slide.slide_id}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .io.zarr_io import write_ome_zarr

    slide = _open(args)
    if args.chunk < 16:
        raise PathvizError(f"--chunk must be at least 16, got {args.chunk}")
    with _progress_bar("chunks") as progress:
        write_ome_zarr(
            slide.levels,
            args.out,
            n_native=slide.n_native,
            mpp=slide.mpp,
            chunk=args.chunk,
            name=slide.slide_id,
            progress=progress,
        )
    print(f"{args.out}: {len(slide.levels)} levels, {slide.width} x {slide.height} px")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .render import render_slide_with_patches

    slide = _open(args)
    table = None
    if args.patches:
        table = _load_table_for(slide, args.patches, args.patch_size, args.slide_id)
    out = render_slide_with_patches(
        slide, table, args.out, color_by=args.color_by, max_size=args.max_size
    )
    print(out)
    return 0


def _load_table_for(slide, path: str, patch_size: int | None, slide_id: str | None):
    from .io.tables import read_table
    from .patches import patches_for_slide

    return patches_for_slide(
        read_table(path, patch_size), path, slide, patch_size=patch_size, slide_id=slide_id
    )


@contextmanager
def _progress_bar(unit: str):
    """Yields a progress(done, total) callback drawing a tqdm bar on stderr; the bar is cleared
    on exit, also on error, so an error stays the one line on stderr."""
    from tqdm import tqdm

    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit=unit, file=sys.stderr, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _embeddings_from_args(args: argparse.Namespace, path: str):
    from .embedding import load_embeddings, remove_background
    from .patches import load_patches

    patches = None
    if args.patches:
        patches = load_patches(args.patches, patch_size=args.patch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("always", PathvizWarning)  # every dropped-row report, not once
        es = load_embeddings(
            path,
            keys=args.keys,
            trust_pickle=args.trust_pickle,
            patches=patches,
            slide_id=args.basename,
            patch_size=args.patch_size,
        )
    if args.remove_background_annotation:
        es = remove_background(es, args.remove_background_annotation, args.max_background_area)
    return es


def _umap_from_args(args: argparse.Namespace, es, components: int):
    from .embedding import UMAPParams, umap_embed

    pca = args.pca
    if pca not in ("auto", "off"):
        try:
            pca = int(pca)
        except ValueError:
            raise PathvizError(f"--pca must be auto, off or a number, got {pca!r}") from None
    params = UMAPParams(
        n_components=components,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        metric=args.metric,
        pca=None if pca == "off" else pca,
        random_state=args.random_state,
    )
    with _progress_bar("%") as progress:
        return umap_embed(
            es.features,
            params,
            knn=args.knn,
            use_cache=not args.no_cache,
            progress=lambda f, _stage: progress(round(100 * f), 100),
        )


def cmd_plot_embeddings(args: argparse.Namespace) -> int:
    from .embedding import embedding_quality
    from .embedding_plot import plot_embeddings_html

    es = _embeddings_from_args(args, args.input)
    coords = _umap_from_args(args, es, args.components)
    annotations = [a for group in args.annotations or [] for a in group]
    print(plot_embeddings_html(es.table.df, coords, args.output, annotations))
    if args.coords_out:
        print(write_coords(es.table.df, coords, args.coords_out))
    if args.quality:
        q = embedding_quality(es.features, coords)
        print(
            f"trustworthiness (k={q['k']}, {q['sample']} patches): {q['trustworthiness']:.4f}; "
            f"k-NN preservation: {q['knn_preservation']:.4f}"
        )
    return 0


def write_coords(df, coords, out) -> Path:
    from .io.tables import write_table
    from .patches import KEY_COLUMNS

    table = df[list(KEY_COLUMNS)].reset_index(drop=True).copy()
    for j in range(coords.shape[1]):
        table[f"umap_{j}"] = coords[:, j]
    return write_table(table, out)


def cmd_plot_image_umap_embeddings(args: argparse.Namespace) -> int:
    from PIL import Image

    from .mosaic import find_slides, umap_mosaic
    from .patches import PatchTable

    es = _embeddings_from_args(args, args.embeddings)
    slides = find_slides(args.input, es.table.df["ID"].unique(), args.layout)
    for slide_id, slide in slides.items():
        rows = es.table.df[es.table.df["ID"] == slide_id]
        PatchTable(rows, es.table.source).check_inside(slide.height, slide.width)
    coords = _umap_from_args(args, es, 2)
    mosaic = umap_mosaic(
        slides,
        es.table,
        coords,
        zoom=args.zoom,
        canvas=args.canvas,
        sort_col=args.sort_col,
        sort_mode=args.sort_mode,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic.image).save(out)
    print(out)
    return 0


def _recipe_from_args(args: argparse.Namespace):
    """The model options as a picklable recipe (cohort workers load the model themselves)."""
    import json

    from .cohort import ModelRecipe

    try:
        kwargs = json.loads(args.factory_kwargs)
    except json.JSONDecodeError as exc:
        raise PathvizError(f"--factory-kwargs is not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise PathvizError("--factory-kwargs must be a JSON object")
    return ModelRecipe(
        path=args.model,
        factory=args.factory,
        factory_kwargs=kwargs,
        trust_pickle=args.trust_pickle,
        input_size=args.input_size,
        resize_mode=args.resize_mode,
        channel_order=args.channel_order,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        activation=args.activation,
        feature_layer=args.feature_layer,
    )


def cmd_extract(args: argparse.Namespace) -> int:
    from .inference import extract
    from .io.tables import write_table
    from .slide import open_slide
    from .tissue import tissue_grid

    if _is_cohort(args.slide):
        return _extract_cohort(args)
    spec = _recipe_from_args(args).load()
    slide = open_slide(args.slide[0], args.layout)
    if args.target_mpp is not None:
        args.level = slide.level_for_mpp(args.target_mpp)
    if args.patches:
        table = _load_table_for(slide, args.patches, args.patch_size, None)
    else:
        table = tissue_grid(slide, args.patch_size or 224, None, args.min_tissue)
    store = args.store or f"{args.out}.store.zarr"
    with _progress_bar("patches") as progress:
        result = extract(
            slide,
            table,
            spec,
            store=store,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            level=args.level,
            bf16=args.bf16,
            embeddings=not args.no_embeddings,
            progress=lambda done, total, _rate: progress(done, total),
        )
    print(write_table(result, args.out))
    return 0


def _explanation_inputs(args: argparse.Namespace):
    """What the explaining commands share: the model on its device, the chosen patches (by
    --ids, --top or a seeded random draw) as model inputs and images, and the references for
    the methods that need them (--background, else -bs patches drawn from the rest)."""
    import numpy as np

    from .attribution.references import check_same_size, random_reference_rows, reference_images
    from .inference import read_patch_batch, resolve_device
    from .slide import open_slide

    spec = _recipe_from_args(args).load()
    slide = open_slide(args.slide, args.layout)
    df = _load_table_for(slide, args.patches, args.patch_size, None).df
    rng = np.random.default_rng(args.seed)
    if args.ids:
        bad = [i for i in args.ids if not 0 <= i < len(df)]
        if bad:
            raise PathvizError(f"--ids: row {bad[0]} is not in {args.patches} ({len(df)} rows)")
        chosen = np.asarray(args.ids)
    elif args.top:
        count, column = args.top
        if column not in df.columns:
            raise PathvizError(f"--top: no column {column!r} in {args.patches}")
        chosen = np.argsort(-df[column].to_numpy(float), kind="stable")[: int(count)]
    else:
        chosen = rng.choice(len(df), size=min(args.batch_size, len(df)), replace=False)
    if not len(chosen):
        raise PathvizError("no patches to explain (the selection is empty)")
    target = args.target if args.target in ("predicted", "each") else _int(args.target, "--target")
    device = resolve_device(args.device)
    if args.device == "auto" and device == "cpu":
        warnings.warn("no CUDA GPU: attributions run on the CPU", PathvizWarning, stacklevel=1)
    model = spec.model.to(device).eval()
    images = read_patch_batch(slide, df.iloc[chosen])
    inputs = spec.preprocess(images, device)
    background = None
    if args.method in ("gradient", "deep"):
        if args.background:
            references = reference_images(args.background, slide, args.patch_size)
        else:
            picks = random_reference_rows(len(df), chosen, args.batch_size, rng)
            references = read_patch_batch(slide, df.iloc[picks])
        check_same_size(references, images)
        background = spec.preprocess(references, device)
    return model, inputs, background, target, images, df.iloc[chosen]


def _method_options(args: argparse.Namespace) -> dict:
    if args.method == "gradient":
        options = {
            "n_samples": args.n_samples,
            "local_smoothing": args.local_smoothing,
            "seed": args.seed,
        }
        if hasattr(args, "samples_per_batch"):  # shapley-plot's speed options
            options.update(
                batch_size=args.samples_per_batch, bf16=args.bf16, channels_last=args.channels_last
            )
        return options
    if args.method in ("gradcam", "gradcampp"):
        return {"layer": args.layer}
    return {}


def cmd_explain(args: argparse.Namespace) -> int:
    """shapley-plot and gradcam: choose patches, explain them chunk by chunk into a store,
    draw the gallery."""
    import numpy as np

    from .attribution.gallery import render_gallery
    from .attribution.stored import explain

    model, inputs, background, target, images, rows = _explanation_inputs(args)
    options = _method_options(args)
    seed = options.pop("seed", 0)
    with _progress_bar("patches") as progress:
        result = explain(
            model,
            inputs,
            args.method,
            background=background,
            target=target,
            output=args.output,
            store=args.attributions_out or "auto",
            keys=rows,
            chunk_size=args.chunk_size,
            seed=seed,
            progress=progress,
            **options,
        )
    titles = [f"x={x} y={y}" for x, y in zip(rows["x"], rows["y"], strict=True)]
    print(
        render_gallery(
            images, result, args.out, titles=titles, per_patch_scale=args.per_patch_scale
        )
    )
    if result.completeness_error is not None:
        print(
            f"completeness error: median {np.median(result.completeness_error):.4f}, "
            f"max {result.completeness_error.max():.4f}"
        )
    print(f"attributions store: {result.metadata['store']}")
    return 0


def cmd_sanity_check(args: argparse.Namespace) -> int:
    from .attribution.sanity import model_randomisation
    from .io.tables import write_table

    model, inputs, background, target, _images, _rows = _explanation_inputs(args)
    if target == "each":
        raise PathvizError("sanity-check: --target each is not supported; give a class index")
    table = model_randomisation(
        model,
        inputs,
        args.method,
        background=background,
        target=target,
        output=args.output,
        init_seed=args.seed,
        **_method_options(args),
    )
    print(table.to_string(index=False))
    print(write_table(table, args.out))
    return 0


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PathvizError(f"{option} must be 'predicted' or a class index, got {text!r}") from None


def _is_cohort(sources: list[str]) -> bool:
    from .io.zarr_io import is_zarr_path

    if len(sources) > 1:
        return True
    source = Path(sources[0])
    return source.suffix.lower() == ".txt" or (source.is_dir() and not is_zarr_path(source))


def _extract_cohort(args: argparse.Namespace) -> int:
    from .cohort import find_cohort_slides, run_cohort

    slides = find_cohort_slides(args.slide)
    recipe = _recipe_from_args(args)
    with _progress_bar("slides") as progress:
        summary = run_cohort(
            slides,
            recipe,
            args.out,
            patches=args.patches,
            patch_size=args.patch_size,
            min_tissue=args.min_tissue,
            batch_size=args.batch_size,
            device=args.device,
            level=args.level,
            bf16=args.bf16,
            embeddings=not args.no_embeddings,
            chunk_size=args.chunk_size,
            scheduler=args.scheduler,
            n_workers=args.n_workers,
            keep_stores=args.keep_stores,
            progress=lambda done, total, _message: progress(done, total),
        )
    print(summary.to_string(index=False))
    failed = summary[summary["status"] == "failed"]
    for _, row in failed.iterrows():
        print(f"pathviz extract: warning: skipped: {row['error']}", file=sys.stderr)
    return 0


def cmd_plot_predictions(args: argparse.Namespace) -> int:
    from .io.tables import read_table
    from .patches import PatchTable
    from .render import render_slide_with_patches
    from .slide import open_slide

    slide = open_slide(args.slide, args.layout)
    df = read_table(args.predictions)
    probs = [c for c in df.columns if str(c).startswith("prob_")]
    column = args.column or (probs[-1] if probs else None)
    if column is None or column not in df.columns:
        raise PathvizError(
            f"{args.predictions}: no column {column!r} to plot "
            f"(prob_* columns: {', '.join(probs) or 'none'})"
        )
    table = PatchTable.from_frame(df, args.predictions)
    table.check_inside(slide.height, slide.width)
    out = render_slide_with_patches(
        slide,
        table,
        args.out,
        color_by=column,
        alpha=args.alpha,
        title=f"{slide.slide_id}: {column} of {len(table)} patches",
    )
    print(out)
    return 0


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import load_demo

    slide, table = load_demo(args.data_dir)
    if args.headless or (not args.screenshot and not _has_display()):
        if not args.headless:
            print(
                "pathviz demo: no display found; writing the demo's results instead "
                f"(to {args.out})",
                file=sys.stderr,
            )
        for path in write_demo_outputs(slide, table, Path(args.out)):
            print(path)
        return 0
    from ._demo_viewer import open_demo_viewer

    return open_demo_viewer(slide, table, screenshot=args.screenshot)


def write_demo_outputs(slide, table, out: Path) -> list[Path]:
    """Headless demo: the patch table (with predictions when torch is there) and figures."""
    from .io.tables import write_table
    from .render import render_slide_with_patches

    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_table(table.df, out / "patches.csv"),
        render_slide_with_patches(
            slide, table, out / "slide_patches_annotation.png", color_by="annotation"
        ),
    ]
    if "prob_dab_positive" in table.df.columns:
        written.append(
            render_slide_with_patches(
                slide, table, out / "slide_patches_prediction.png", color_by="prob_dab_positive"
            )
        )
        written.extend(_write_demo_embedding_outputs(slide, table, out))
        written.extend(_write_demo_attribution_outputs(slide, table, out))
    return written


def _write_demo_attribution_outputs(slide, table, out: Path) -> list[Path]:
    """A gallery per attribution method for a few demo patches (the most DAB-positive ones,
    explained against random background patches)."""
    import numpy as np

    from ._demo import ANNOTATIONS
    from ._demo_model import load_demo_model, read_patches, to_model_input
    from .attribution import METHODS, attribute
    from .attribution.gallery import render_gallery
    from .patches import PatchTable

    df = table.df
    chosen = np.argsort(-df["dab_positive"].to_numpy(), kind="stable")[:4]
    rest = np.setdiff1d(np.arange(len(df)), chosen)
    background = np.random.default_rng(0).choice(rest, 16, replace=False)
    images = read_patches(slide, PatchTable(df.iloc[chosen], table.source))
    inputs = to_model_input(images)
    reference = to_model_input(read_patches(slide, PatchTable(df.iloc[background], table.source)))
    model = load_demo_model()
    written = []
    for method in METHODS:
        result = attribute(model, inputs, method, background=reference)
        titles = [f"x={df['x'].iat[i]} y={df['y'].iat[i]}" for i in chosen]
        written.append(
            render_gallery(
                images,
                result,
                out / f"attributions_{method}.png",
                class_names=list(ANNOTATIONS),
                titles=titles,
            )
        )
    return written


def _write_demo_embedding_outputs(slide, table, out: Path) -> list[Path]:
    """What plot-embeddings and plot-image-umap-embeddings write, for the demo embeddings."""
    from PIL import Image

    from ._demo import demo_umap
    from .embedding_plot import plot_embeddings_html
    from .mosaic import umap_mosaic

    es, coords3 = demo_umap(table, n_components=3)
    written = [
        plot_embeddings_html(es.table.df, coords3, out / "embeddings_umap.html", ["annotation"]),
        write_coords(es.table.df, coords3, out / "umap_coords.csv"),
    ]
    es2, coords2 = demo_umap(table, n_components=2)
    mosaic = umap_mosaic(
        {slide.slide_id: slide},
        es2.table,
        coords2,
        zoom=0.5,
        canvas=1536,
        sort_col="prob_dab_positive",
    )
    Image.fromarray(mosaic.image).save(out / "umap_image_mosaic.png")
    written.append(out / "umap_image_mosaic.png")
    return written


if __name__ == "__main__":
    sys.exit(main())
