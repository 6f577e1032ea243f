"""pathviz extract --features: a two-stage card's head alone, on patch features computed before
(CLAM/TRIDENT files). One file: -o is the patch table, the slide prediction beside it. Several
files or a folder: -o is a folder with a table and a prediction per slide and summary.csv, one
row per slide; a slide that fails is a row and a stderr line, and the others go on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import PathvizError
from ._common import progress_bar, report_failed_slides, step


def head_on_features(args: argparse.Namespace, card) -> int:
    from ..slide_head import find_feature_files, load_head

    if args.explain_top:
        raise PathvizError(
            "--explain-top: pixels need the encoder; with --features only the head runs"
        )
    files = find_feature_files(args.features)
    cohort = len(files) > 1 or Path(args.features[0]).is_dir()
    if cohort and (args.slide or args.slide_id or args.keys):
        raise PathvizError(
            "--slide/--slide-id/--keys: give them with one --features file (its slide), not a "
            "cohort"
        )
    step(f"loading the head of {card.source}")
    model = load_head(card, trust_model=args.trust_model)
    if model.head_layout:  # a public checkpoint layout, renamed: say which
        print(f"head weights: {model.head_layout}", file=sys.stderr)
    if not cohort:
        _one_slide(args, model, files[0], Path(args.out))
        return 0
    return _cohort(args, model, files, Path(args.out))


def _one_slide(args, model, path: str, out: Path, print_paths: bool = True):
    from ..io.tables import write_table
    from ..slide_head import predict_features, read_slide_features
    from ..slide_level import slide_prediction_path, write_slide_prediction

    json_path = slide_prediction_path(out)
    if json_path.exists() and not args.overwrite:
        raise PathvizError(f"{json_path}: exists; pass --overwrite")
    slide_shape = None
    if args.slide:
        from ..slide import open_slide

        slide = open_slide(args.slide[0], args.layout)
        slide_shape = (slide.height, slide.width)
    rows, features = read_slide_features(path, keys=args.keys, model=model)
    if args.slide_id:
        rows = rows.assign(ID=str(args.slide_id))  # one file: --slide-id names its slide
    result = predict_features(
        model, rows, features, path, patch_size=args.patch_size, slide_shape=slide_shape,
        embeddings=not args.no_embeddings,
    )  # fmt: skip
    table = write_table(result.table, str(out), overwrite=args.overwrite)
    write_slide_prediction(
        json_path, result.prediction, result.slide_id, model.source, model.head_layout
    )
    if print_paths:
        print(table)
        print(json_path)
        _say(result)
    return result


def _cohort(args, model, files: list[str], folder: Path) -> int:
    import pandas as pd

    from ..io.tables import write_table
    from ..slide_head import table_name

    if folder.exists() and not folder.is_dir():
        raise PathvizError(f"{folder}: exists and is not a folder; -o is a folder for a cohort")
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    with progress_bar("slides", f"the head on {len(files)} slides") as progress:
        for done, path in enumerate(files, 1):
            out = folder / table_name(path)
            try:
                result = _one_slide(args, model, path, out, print_paths=False)
            except PathvizError as exc:
                records.append({"file": path, "status": "failed", "error": str(exc)})
            else:
                summary = result.prediction.summary()
                probabilities = {f"prob_{k}": v for k, v in summary["probabilities"].items()}
                records.append({
                    "file": path, "slide": result.slide_id, "status": "done", "error": "",
                    "prediction": summary["prediction"], **probabilities,
                    "n_patches": summary["n_patches"], "table": str(out),
                })  # fmt: skip
            progress(done, len(files))
    summary = pd.DataFrame(records)
    write_table(summary, str(folder / "summary.csv"), overwrite=True)
    shown = [c for c in summary.columns if c not in ("file", "error", "table")]
    print(summary[shown].to_string(index=False))
    return report_failed_slides(args.command, summary, folder)


def _say(result) -> None:
    probability = result.prediction.summary()["probabilities"]
    shown = ", ".join(f"{name} {p:.3f}" for name, p in probability.items())
    print(f"slide {result.slide_id}: {result.prediction.predicted} ({shown})", file=sys.stderr)
