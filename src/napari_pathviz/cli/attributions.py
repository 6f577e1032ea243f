"""Attribution commands: shapley-plot (PathFlowAI's shapley_plot), gradcam and sanity-check."""

from __future__ import annotations

import argparse
import warnings

from ..attribution import ATTENTION_METHODS, METHODS
from ..errors import PathvizError, PathvizWarning
from ..io.zarr_io import LAYOUTS
from ._common import (
    add_model_options,
    add_slide_id_option,
    load_table_for,
    progress_bar,
    recipe_from_args,
    seed_value,
    step,
)
from ._rollout_options import add_rollout_options, rollout_options
from .cohort_explain import add_cohort_options, cmd_explain_cohort, is_cohort_args

# --explain-output's names -> the engine's output names
EXPLAINED_OUTPUTS = ("logit", "sigmoid", "softmax")

COMMANDS = (
    (
        "shapley-plot",
        "SHAP expected gradients or DeepLIFT for patches, as a gallery PNG "
        "(PathFlowAI's shapley_plot)",
    ),
    (
        "gradcam",
        "Grad-CAM / Grad-CAM++ for patches, or attention rollout / Chefer relevance for a "
        "vision transformer, as a gallery PNG",
    ),
    (
        "sanity-check",
        "model-randomisation test of an attribution method (Adebayo et al. 2018): "
        "Spearman correlation of the maps as the weights are randomised from the top down",
    ),
)


def add_parsers(sub) -> None:
    for name, helptext in COMMANDS:
        p = sub.add_parser(name, help=helptext)
        _add_shared_options(p, name)
        if name == "sanity-check":
            _add_sanity_options(p)
        elif name == "shapley-plot":
            _add_shapley_options(p)
        else:
            p.add_argument(
                "--method",
                choices=("gradcam", "gradcampp", *ATTENTION_METHODS),
                default="gradcam",
                help="gradcam, gradcampp (Grad-CAM++), or for a vision transformer rollout "
                "(attention rollout) or chefer (Chefer relevance)",
            )
            p.add_argument(
                "--layer",
                help="Grad-CAM module to explain (default: the last conv block; in a vision "
                "transformer the last block's norm1)",
            )
            add_rollout_options(p)
            add_gradcampp_eps_option(p)
        if name != "sanity-check":
            p.add_argument(
                "--attributions-out",
                help="zarr store the maps are written to, chunk by chunk; a rerun of the same "
                "job resumes it (default: a store in the results cache)",
            )
            p.add_argument(
                "--chunk-size", type=int, default=16, help="patches per stored chunk (resume unit)"
            )
            p.add_argument(
                "--smooth",
                type=float,
                default=0.0,
                metavar="SIGMA",
                help="Gaussian sigma (map px) blurring each gallery map on its own, as the "
                "napari widget's Map smoothing; 1.5 turns expected gradients' 2-px dot lattice "
                "into the structure it marks (default 0: the maps as computed; the store keeps "
                "them so)",
            )
            p.set_defaults(func=cmd_explain)


def _add_shared_options(p: argparse.ArgumentParser, name: str) -> None:
    add_model_options(p)
    if name == "sanity-check":
        p.add_argument("--slide", required=True, help="slide file or folder")
    else:  # a cohort too: cli/cohort_explain.py
        p.add_argument(
            "--slide",
            required=True,
            nargs="+",
            help="a slide; or, for a cohort, several slides, a folder of slides, a .txt list "
            "or a slides table (ID, path) (then --top N COL, and -o is an output folder)",
        )
        add_cohort_options(p)
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="axis order of a zarr slide's array (auto: from the file's metadata; xyc: "
        "PathFlowAI's (x, y, C))",
    )
    p.add_argument(
        "--patches",
        required=True,
        help="patch table; for a cohort, the output folder of pathviz extract on it or a "
        "table whose ID column names each row's slide",
    )
    add_slide_id_option(p)
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
        "random, seeded), and the background size (twice this for -mth gradient, as in "
        "PathFlowAI)",
    )
    # PathFlowAI's -p only changes the labels; what is explained has its own option.
    p.add_argument(
        "-p",
        "--pred_out",
        choices=("none", "sigmoid", "softmax"),
        default="none",
        help="label each map with the prediction after sigmoid/softmax (PathFlowAI's -p); "
        "none: the model's own probability",
    )
    p.add_argument(
        "--explain-output",
        choices=EXPLAINED_OUTPUTS,
        default="logit",
        help="what the maps explain: the class logit (PathFlowAI, shap), or its probability "
        "after sigmoid/softmax",
    )
    p.add_argument(
        "--target",
        default="predicted",
        help="class to explain: predicted (default), each (every class), a class name of "
        "the model card (or --class-names) or an output index",
    )
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random draws")
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


def _add_sanity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-mth",
        "--method",
        choices=METHODS,
        default="gradient",
        help="the attribution method tested: gradient (expected gradients), deep (DeepLIFT), "
        "gradcam, gradcampp, rollout or chefer",
    )
    p.add_argument("-ns", "--n_samples", type=int, default=100, help="samples per patch (gradient)")
    p.add_argument(
        "-l",
        "--local_smoothing",
        type=float,
        default=0.0,
        help="std of the noise added to each sample (gradient)",
    )
    p.add_argument(
        "--layer", help="Grad-CAM layer (default: the last conv block, or a ViT's last norm1)"
    )
    add_rollout_options(p)
    add_gradcampp_eps_option(p)
    p.set_defaults(func=cmd_sanity_check)


def add_gradcampp_eps_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gradcampp-eps",
        type=float,
        default=0.0,
        metavar="EPS",
        help="added to Grad-CAM++'s alpha denominator 2g^2 + sum(A)g^3 (default 0: the "
        "paper's eq. 19; 1e-6 reproduces pytorch-grad-cam's maps, which on raw logits differ "
        "from the paper's by 0.06-13%% of the map's maximum on the tested models)",
    )


def _add_shapley_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-mth",
        "--method",
        choices=("gradient", "deep"),
        default="gradient",
        help="gradient: SHAP expected gradients; deep: DeepLIFT (PathFlowAI's -mth)",
    )
    p.add_argument("-ns", "--n_samples", type=int, default=400, help="samples per patch (gradient)")
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


def explanation_inputs(args: argparse.Namespace):
    """What the explaining commands share: the model on its device, the chosen patches (by
    --ids, --top or a seeded random draw) as model inputs and images, and the references for
    the methods that need them (--background, else -bs patches drawn from the rest)."""
    import numpy as np
    import pandas as pd

    from ..attribution.references import check_same_size, random_reference_rows, reference_images
    from ..classes import resolve_target
    from ..inference import read_patch_batch, resolve_device
    from ..slide import open_slide

    top_count = _top_count(args.top[0]) if args.top else None  # before loading anything
    spec = recipe_from_args(args).load()
    slide = open_slide(args.slide, args.layout)
    df = load_table_for(slide, args.patches, args.patch_size, args.slide_id).df
    rng = np.random.default_rng(args.seed)
    if args.ids:
        bad = [i for i in args.ids if not 0 <= i < len(df)]
        if bad:
            raise PathvizError(f"--ids: row {bad[0]} is not in {args.patches} ({len(df)} rows)")
        chosen = np.asarray(args.ids)
    elif args.top:
        count, column = top_count, args.top[1]
        if column not in df.columns:
            raise PathvizError(f"--top: no column {column!r} in {args.patches}")
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
        if np.isnan(values).all():
            raise PathvizError(f"--top: column {column!r} of {args.patches} holds no numbers")
        # NaN ranks last: a patch without a value is never among the highest. The top patches
        # that show different tissue: no overlapping tiles, no flipped or turned copies.
        ranked = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
        chosen = _top_distinct(
            df, ranked, count, lambda i: read_patch_batch(slide, df.iloc[[i]])[0]
        )
        if len(chosen) < count:  # never fewer than asked without saying so
            warnings.warn(
                f"--top {count} {column}: only {len(chosen)} of the {len(df)} patches of "
                f"{args.patches} show different tissue (the others overlap a chosen patch or "
                "repeat one flipped or turned); explaining those",
                PathvizWarning,
                stacklevel=1,
            )
    else:
        chosen = rng.choice(len(df), size=min(args.batch_size, len(df)), replace=False)
    if not len(chosen):
        raise PathvizError("no patches to explain (the selection is empty)")
    target = resolve_target(args.target, spec.class_names)
    args.class_names = spec.class_names  # the names in effect (flag, else card): for labels
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
            picks = random_reference_rows(
                len(df), chosen, background_size(args), rng, source=str(args.patches)
            )
            references = read_patch_batch(slide, df.iloc[picks])
        check_same_size(references, images)
        background = spec.preprocess(references, device)
    return model, inputs, background, target, images, df.iloc[chosen]


def _top_distinct(df, ranked, count: int, image_of):
    """The ``count`` best rows of ``ranked`` at distinct places: first apart from each other
    (no neighbouring tiles); when too few are, the next best that only touch a pick fill up
    (still no overlapping tile, no flipped or turned copy). Best first."""
    import numpy as np

    from ..attribution.gallery import distinct_rows

    chosen = distinct_rows(df, ranked, count, image_of=image_of)
    if len(chosen) < count:
        rest = ranked[~np.isin(ranked, chosen)]
        both = np.concatenate([chosen, rest])
        chosen = distinct_rows(df, both, count, image_of=image_of, spacing=0.0)
        rank = np.empty(len(df), np.int64)
        rank[ranked] = np.arange(len(ranked))
        chosen = chosen[np.argsort(rank[chosen], kind="stable")]
    return chosen


def background_size(args: argparse.Namespace) -> int:
    """PathFlowAI draws one batch of references for deep and two for gradient."""
    return 2 * args.batch_size if args.method == "gradient" else args.batch_size


def engine_output(args: argparse.Namespace) -> str:
    return "none" if args.explain_output == "logit" else args.explain_output


def method_options(args: argparse.Namespace) -> dict:
    from ..attribution.gradcam import checked_eps

    eps = checked_eps(getattr(args, "gradcampp_eps", 0.0), args.method == "gradcampp")
    rollout = rollout_options(args)  # refuses them with another method
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
    if args.method == "gradcampp":
        return {"layer": args.layer, "eps": eps}
    if args.method in ("gradcam", *ATTENTION_METHODS):
        return {"layer": args.layer, **rollout}  # the attention methods refuse a layer
    return {}


def cmd_explain(args: argparse.Namespace) -> int:
    """shapley-plot and gradcam: choose patches, explain them chunk by chunk into a store,
    draw the gallery."""
    from ..attribution.gallery import render_gallery
    from ..attribution.gradcam import checked_eps
    from ..attribution.stored import explain

    if args.smooth < 0:  # said before any work
        raise PathvizError(f"--smooth must be 0 or more (map px), got {args.smooth:g}")
    checked_eps(
        getattr(args, "gradcampp_eps", 0.0), args.method == "gradcampp"
    )  # said before any work too
    if is_cohort_args(args):
        if args.smooth:  # not silently ignored
            raise PathvizError(
                "--smooth: not for a cohort (its galleries show the maps as computed); "
                "explain one slide at a time to smooth its gallery"
            )
        return cmd_explain_cohort(args)
    args.slide = args.slide[0]
    step(f"loading the model {args.model} and reading the patches")
    model, inputs, background, target, images, rows = explanation_inputs(args)
    options = method_options(args)
    seed = options.pop("seed", 0)
    with progress_bar("patches", f"{args.method} attributions of {len(rows)} patches") as progress:
        result = explain(
            model,
            inputs,
            args.method,
            background=background,
            target=target,
            output=engine_output(args),
            store=args.attributions_out or "auto",
            keys=rows,
            chunk_size=args.chunk_size,
            seed=seed,
            progress=progress,
            **options,
        )
    titles = [f"x={x} y={y}" for x, y in zip(rows["x"], rows["y"], strict=True)]
    step(f"drawing the gallery {args.out}")
    print(
        render_gallery(
            images,
            smoothed_for_gallery(result, args.smooth),
            args.out,
            titles=titles,
            per_patch_scale=args.per_patch_scale,
            label_output=args.pred_out,
            class_names=args.class_names,
        )
    )
    report_completeness(result, rows)
    print(f"attributions store: {result.metadata['store']}")
    return 0


def smoothed_for_gallery(result, sigma: float):
    """``result`` with each map blurred by ``sigma`` map px (the napari widget's smoothing),
    for drawing only; sigma 0 returns it as is."""
    import dataclasses

    from ..attribution.layer import smooth_maps

    if sigma == 0:
        return result
    return dataclasses.replace(result, maps=smooth_maps(result.maps, sigma))


def report_completeness(result, rows) -> None:
    """Prints the completeness error (how far each map's sum is from f(x) - E[f(reference)])
    and warns, one line, when maps miss it by more than 5% (NaN included): such a map does
    not add up to the output change it claims to explain."""
    import numpy as np

    error = result.completeness_error
    if error is None:
        return
    print(f"completeness error: median {np.nanmedian(error):.4f}, max {np.nanmax(error):.4f}")
    bad = result.incomplete_rows()
    if len(bad):
        patches = rows.iloc[result.patch_of_rows()[bad]]
        where = ", ".join(
            f"x={x} y={y}" for x, y in zip(patches["x"][:5], patches["y"][:5], strict=True)
        )
        warnings.warn(
            f"{result.completeness_warning()} (patches {where}); raise -ns or check the "
            "model's layers",
            PathvizWarning,
            stacklevel=1,
        )


def cmd_sanity_check(args: argparse.Namespace) -> int:
    from ..attribution.gradcam import checked_eps
    from ..attribution.sanity import model_randomisation
    from ..io.tables import write_table

    checked_eps(args.gradcampp_eps, args.method == "gradcampp")  # before loading anything
    step(f"loading the model {args.model} and reading the patches")
    model, inputs, background, target, _images, rows = explanation_inputs(args)
    if target == "each":
        raise PathvizError("sanity-check: --target each is not supported; give a class index")
    step(f"{args.method} attributions of {len(rows)} patches, layer by layer randomised")
    table = model_randomisation(
        model,
        inputs,
        args.method,
        background=background,
        target=target,
        output=engine_output(args),
        init_seed=args.seed,
        **method_options(args),
    )
    original = table.attrs.pop("original")  # not a column: kept out of the written table
    print(table.to_string(index=False))
    report_completeness(original, rows)  # the unrandomised model's maps
    print(write_table(table, args.out, overwrite=args.overwrite))
    return 0


def _top_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise PathvizError(f"--top N COL: N must be a whole number, got {text!r}") from None
    if count < 0:
        raise PathvizError(f"--top N COL: N must be 0 or more, got {count}")
    return count
