"""QuPath commands: export-geojson (patches to QuPath annotations or tiles) and annotate (QuPath
annotations to per-patch coverage columns)."""

from __future__ import annotations

import argparse

from ..errors import PathvizError


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "export-geojson",
        help="write patches as QuPath annotations or tiles (GeoJSON FeatureCollection)",
        description="Exports all patches of TABLE, those listed in --rows, those meeting --where, "
        "or one class per value of --column, as QuPath objects: one annotation per class (the "
        "union of its patches) or one tile per patch, its numeric columns as measurements. "
        "Open the file in QuPath with File > Import objects.",
    )
    _add_table_options(p)
    p.add_argument("-o", "--out", required=True, help="output .geojson")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rows", help="table of the patch keys to export (x, y[, ID, patch_size])")
    which.add_argument(
        "--where", help="export the patches meeting COLUMN OP VALUE, e.g. 'prob_tumor>0.5'"
    )
    p.add_argument(
        "--column",
        help="one class per value of this column (a UMAP cluster, y_pred); with --rows or "
        "--where, of the patches they keep",
    )
    p.add_argument(
        "--as",
        dest="object_type",
        choices=("annotation", "tile"),
        default="annotation",
        help="one annotation per class (default) or one tile per patch",
    )
    p.add_argument(
        "--class-name",
        help="class of the exported patches without --column (default: the class of a "
        "prob_<class> --where, else 'selection')",
    )
    p.set_defaults(func=cmd_export_geojson)

    p = sub.add_parser(
        "annotate",
        help="label each patch by the QuPath annotations covering it",
        description="Adds a column qupath_<class> per annotation class (the fraction of the "
        "patch it covers) and qupath_class (the class covering most of the patch, when at "
        "least --min-coverage; else NA): a column to colour the patches and the UMAP by.",
    )
    _add_table_options(p)
    p.add_argument("--geojson", required=True, help="QuPath annotations (.geojson)")
    p.add_argument("-o", "--out", required=True, help="output table (.parquet, .csv, .db)")
    p.add_argument(
        "--min-coverage",
        type=float,
        default=0.5,
        help="least fraction of a patch its class must cover (default 0.5)",
    )
    p.set_defaults(func=cmd_annotate)


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "table",
        help="patch table: .parquet/.csv/.db, CLAM/TRIDENT .h5, WSInfer .csv or .geojson",
    )
    p.add_argument("--patch-size", type=int, help="level-0 patch size, when the table lacks it")
    p.add_argument("--slide-id", help="keep this slide's rows (a table of several slides)")
    p.add_argument("--slide", help="the slide: every patch must lie inside it (checked when given)")


def _load(args: argparse.Namespace):
    from ..patches import load_patches

    shape = None
    if args.slide:
        from ..slide import open_slide

        slide = open_slide(args.slide)
        shape = (slide.height, slide.width)
    return load_patches(
        args.table, patch_size=args.patch_size, slide_id=args.slide_id, slide_shape=shape
    )


def cmd_export_geojson(args: argparse.Namespace) -> int:
    from ..annotations import default_class_name, patch_features, select_rows
    from ..io.geojson import write_geojson
    from ..io.tables import read_table

    if not str(args.out).lower().endswith(".geojson"):
        raise PathvizError(f"-o/--out: {args.out}: the output must be a .geojson file")
    table = _load(args)
    rows = read_table(args.rows) if args.rows else None
    mask = select_rows(table.df, rows=rows, where=args.where)
    features = patch_features(
        table.df,
        mask,
        class_name=args.class_name or default_class_name(args.where),
        column=args.column,
        object_type=args.object_type,
    )
    write_geojson(args.out, features)
    classes = sorted({f.class_name for f in features})
    print(
        f"wrote {len(features)} {args.object_type}(s) of {int(mask.sum())} patches, "
        f"class(es) {', '.join(classes)}, to {args.out}"
    )
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from ..annotations import CLASS_COLUMN, label_patches
    from ..io.geojson import read_geojson
    from ..io.tables import write_table

    table = _load(args)
    labelled = label_patches(table, read_geojson(args.geojson), min_coverage=args.min_coverage)
    write_table(labelled, args.out, overwrite=args.overwrite)
    counts = labelled[CLASS_COLUMN].value_counts()
    summary = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"labelled {len(labelled)} patches ({summary}); wrote {args.out}")
    return 0
