"""Every bad or hostile input a user can hand ``pathviz``, one row each: the command must exit
with status 2, print exactly one error line naming the file, row or option at fault (no
traceback; only our own one-line warnings beside it), and leave every file it was not told to
write untouched.

Rows name files of the workspace by placeholder ({slide}, {csv}, ...; see hostile_workspace.py)
and {tmp}, a fresh folder for the outputs the command is allowed to write.
"""

from __future__ import annotations

import re

import pytest

from hostile_workspace import build_workspace, snapshot
from napari_pathviz.cli import main

MODEL = (
    "-m {weights} --factory napari_pathviz._demo_model:build_demo_model "
    "--mean 0.8 0.72 0.7 --std 0.15 0.18 0.18"
)
EXPLAIN = MODEL + " --slide {slide} --patches {patches} --device cpu"
EXTRACT = (
    "extract " + MODEL + " --slide {slide} --patches {patches} -o {tmp}/out.parquet --device cpu"
)
EMBED = "plot-embeddings -i {emb} -o {tmp}/umap.html"
MOSAIC = "plot-image-umap-embeddings -e {emb} -i {slide} -o {tmp}/mosaic.png"
RENDER = "render {slide} -o {tmp}/fig.png"
PREDICTIONS = "plot-predictions --slide {slide} -p {predictions} -o {tmp}/pred.png"
SHAP = "shapley-plot " + EXPLAIN + " -o {tmp}/maps.png --ids 0 1 -bs 2 -ns 4"
CAM = "gradcam " + EXPLAIN + " -o {tmp}/cam.png --ids 0 1"
ANNOTATE = "annotate {patches} --geojson {geo_feature} -o {tmp}/labelled.csv"
GEOJSON = "export-geojson {patches} -o {tmp}/out.geojson"
SANITY = "sanity-check " + EXPLAIN + " -o {tmp}/sanity.csv --ids 0 -bs 2 -ns 4"

# (case, command line, a fragment the one error line must contain)
CASES = [
    # --- slides: info, check ---
    ("info-missing", "info {tmp}/missing.zarr", "missing.zarr"),
    ("info-empty-folder", "info {empty_dir}", "empty_dir"),
    ("info-not-a-tiff", "info {not_a_slide}", "scan.svs"),
    ("info-zero-size-zarr", "info {zero}", "zero.zarr"),
    ("info-absurd-header", "info {huge}", "huge.zarr"),
    ("info-stripped-tiff", "info {strips}", "--allow-untiled"),
    ("info-bad-layout", "info {slide} --layout zyx", "--layout"),
    ("info-csv-as-slide", "info {csv}", "csv.csv"),
    ("check-missing-chunk", "check {missing_chunk}", "missing_chunk"),
    ("check-corrupt-chunk", "check {corrupt_chunk}", "corrupt_chunk"),
    ("check-zero-length-tile", "check {zero_tile}", "tile"),
    ("check-missing", "check {tmp}/nothing.svs", "nothing.svs"),
    # --- patches ---
    ("patches-size-zero", "patches {slide} -o {tmp}/p.csv --patch-size 0", "--patch-size"),
    ("patches-size-negative", "patches {slide} -o {tmp}/p.csv --patch-size -64", "--patch-size"),
    ("patches-stride-zero", "patches {slide} -o {tmp}/p.csv --stride 0", "--stride"),
    ("patches-tissue-above-one", "patches {slide} -o {tmp}/p.csv --min-tissue 2", "--min-tissue"),
    ("patches-tissue-negative", "patches {slide} -o {tmp}/p.csv --min-tissue -1", "--min-tissue"),
    ("patches-bad-suffix", "patches {slide} -o {tmp}/p.txt", "p.txt"),
    ("patches-replace-db-table", "patches {slide} -o {db} --patch-size 64", "--overwrite"),
    ("patches-over-input-table", "patches {slide} -o {patches}", "patches.parquet"),
    ("patches-into-slide", "patches {slide} -o {slide}/grid.csv", "demo_ihc.ome.zarr"),
    ("patches-missing-slide", "patches {tmp}/none.zarr -o {tmp}/p.csv", "none.zarr"),
    ("patches-over-existing", "patches {slide} -o {csv}", "--overwrite"),
    # --- convert ---
    ("convert-exists", "convert {slide} {empty_dir}", "empty_dir"),
    ("convert-onto-slide", "convert {slide} {slide}", "demo_ihc.ome.zarr"),
    ("convert-inside-slide", "convert {slide} {slide}/copy.zarr", "demo_ihc.ome.zarr"),
    ("convert-chunk-tiny", "convert {slide} {tmp}/c.zarr --chunk 8", "--chunk"),
    ("convert-chunk-slow", "convert {slide} {tmp}/c.zarr --chunk 16", "at least 64"),
    ("convert-chunk-negative", "convert {slide} {tmp}/c.zarr --chunk -512", "--chunk"),
    ("convert-missing", "convert {tmp}/nothing.tif {tmp}/c.zarr", "nothing.tif"),
    # --- render ---
    ("render-table-as-output", "render {slide} -o {tmp}/table.csv", "table.csv"),
    ("render-max-size-negative", RENDER + " --max-size -10", "--max-size"),
    ("render-max-size-zero", RENDER + " --max-size 0", "--max-size"),
    ("render-missing-table", RENDER + " --patches {tmp}/none.csv", "none.csv"),
    ("render-table-without-x", RENDER + " --patches {no_xy}", "no_xy.csv"),
    ("render-negative-coordinate", RENDER + " --patches {negative}", "negative.csv"),
    ("render-fractional-coordinate", RENDER + " --patches {fractional}", "fractional.csv"),
    ("render-text-coordinate", RENDER + " --patches {text_coords}", "text_coords.csv"),
    ("render-patch-outside", RENDER + " --patches {outside}", "outside.csv"),
    ("render-other-slide-rows", RENDER + " --patches {other_slide}", "another_slide"),
    ("render-unknown-column", RENDER + " --patches {patches} --color-by nope", "nope"),
    ("render-unknown-db-size", RENDER + " --patches {db} --patch-size 999", "999"),
    ("render-garbage-parquet", RENDER + " --patches {garbage_parquet}", "garbage.parquet"),
    ("render-header-only", RENDER + " --patches {header_only}", "header_only.csv: the table is"),
    ("render-unknown-slide-id", RENDER + " --patches {patches} --slide-id nope", "nope"),
    ("render-over-input", "render {slide} -o {png} --patches {patches}", "--overwrite"),
    # --- plot-predictions ---
    ("predictions-alpha-above-one", PREDICTIONS + " --alpha 5", "--alpha"),
    ("predictions-alpha-negative", PREDICTIONS + " --alpha -1", "--alpha"),
    ("predictions-unknown-column", PREDICTIONS + " --column nope", "nope"),
    (
        "predictions-no-probabilities",
        "plot-predictions --slide {slide} -p {csv} -o {tmp}/p.png",
        "prob_",
    ),
    (
        "predictions-missing",
        "plot-predictions --slide {slide} -p {tmp}/x.csv -o {tmp}/p.png",
        "x.csv",
    ),
    (
        "predictions-output-is-input",
        "plot-predictions --slide {slide} -p {predictions} -o {predictions}",
        "predictions.csv",
    ),
    # --- plot-embeddings ---
    ("embed-missing", "plot-embeddings -i {tmp}/none.parquet -o {tmp}/u.html", "none.parquet"),
    ("embed-garbage", "plot-embeddings -i {garbage_parquet} -o {tmp}/u.html", "garbage.parquet"),
    ("embed-object-npz", "plot-embeddings -i {object_npz} -o {tmp}/u.html", "object.npz"),
    ("embed-ragged-npz", "plot-embeddings -i {ragged_npz} -o {tmp}/u.html", "ragged.npz"),
    ("embed-npy-without-keys", "plot-embeddings -i {npy} -o {tmp}/u.html", "--keys"),
    ("embed-pickle-untrusted", "plot-embeddings -i {pkl} -o {tmp}/u.html", "trust"),
    ("embed-huge-values", "plot-embeddings -i {huge_values} -o {tmp}/u.html", "huge_values"),
    ("embed-all-nan", "plot-embeddings -i {all_nan} -o {tmp}/u.html", "nan"),
    ("embed-no-features", "plot-embeddings -i {no_feat} -o {tmp}/u.html", "no_feat"),
    ("embed-text-features", "plot-embeddings -i {text_feat} -o {tmp}/u.html", "text_feat"),
    ("embed-metric-bogus", EMBED + " --metric bogus", "--metric"),
    ("embed-neighbours-one", EMBED + " -nn 1", "n_neighbors"),
    ("embed-neighbours-zero", EMBED + " -nn 0", "n_neighbors"),
    ("embed-neighbours-too-many", EMBED + " -nn 100000", "100000"),
    ("embed-min-dist-negative", EMBED + " --min-dist -1", "min-dist"),
    ("embed-pca-text", EMBED + " --pca abc", "--pca"),
    ("embed-pca-zero", EMBED + " --pca 0", "--pca"),
    ("embed-pca-negative", EMBED + " --pca -3", "--pca"),
    ("embed-components-four", EMBED + " --components 4", "--components"),
    ("embed-random-state-negative", EMBED + " --random-state -1", "--random-state"),
    ("mosaic-random-state-negative", MOSAIC + " --random-state -1", "--random-state"),
    ("embed-unknown-annotation", EMBED + " --patches {patches} -a nope", "nope"),
    ("embed-unknown-background", EMBED + " --patches {patches} -rb nope", "nope"),
    # a patch table's column, named without --patches: asked for, before the UMAP runs
    ("embed-table-column-without-patches", EMBED + " -a dab_positive", "add --patches"),
    ("embed-table-background-without-patches", EMBED + " -rb background", "add --patches"),
    ("mosaic-table-sort-without-patches", MOSAIC + " -sc prob_dab_positive", "add --patches"),
    ("embed-background-area-above-one", EMBED + " --patches {patches} -rb background -ma 2", "-ma"),
    ("embed-unknown-basename", EMBED + " -b nope", "nope"),
    ("embed-missing-patches", EMBED + " --patches {tmp}/none.csv", "none.csv"),
    ("embed-missing-keys", "plot-embeddings -i {npy} --keys {tmp}/k.csv -o {tmp}/u.html", "k.csv"),
    ("embed-output-is-input", "plot-embeddings -i {emb} -o {emb}", "emb.parquet"),
    # --- plot-embeddings over a cohort: slides table and batch score (before any UMAP) ---
    ("embed-slides-missing", EMBED + " --slides {tmp}/none.csv", "none.csv"),
    ("embed-slides-garbage", EMBED + " --slides {garbage_parquet}", "garbage.parquet"),
    ("embed-slides-without-path", EMBED + " --slides {csv}", "no path column"),
    ("embed-slides-duplicate-ids", EMBED + " --slides {csv} --slides-dir {empty_dir}", "duplicate"),
    ("embed-slides-dir-alone", EMBED + " --slides-dir {empty_dir}", "--slides"),
    ("embed-slides-no-rows", EMBED + " --slides {header_only} --slides-dir {empty_dir}", "no rows"),
    (
        "extract-cohort-out-is-slides-folder",
        "extract " + MODEL + " --slide {empty_dir}/.. -o {empty_dir}/..",
        "slides' folder",
    ),
    ("embed-slides-dir-missing", EMBED + " --slides {csv} --slides-dir {tmp}/nodir", "nodir"),
    ("embed-batch-unknown-column", EMBED + " --batch-score site", "site"),
    ("embed-batch-within-alone", EMBED + " --batch-within ID", "--batch-score"),
    ("embed-batch-k-zero", EMBED + " --batch-score ID --batch-k 0", "--batch-k"),
    # k >= a group's patches: score 0.000 "mixed as random" whatever the embedding
    (
        "embed-batch-k-above-group",
        EMBED + " --patches {patches} --batch-score annotation --batch-k 250",
        "--batch-k",
    ),
    ("embed-batch-sample-zero", EMBED + " --batch-score ID --batch-sample 0", "--batch-sample"),
    ("embed-cohort-folder-empty", "plot-embeddings -i {empty_dir} -o {tmp}/u.html", "empty_dir"),
    ("embed-coords-over-input", EMBED + " --coords-out {emb}", "emb.parquet"),
    ("embed-coords-over-patches", EMBED + " --patches {patches} --coords-out {patches}", "patches"),
    ("embed-html-exists", "plot-embeddings -i {emb} -o {existing_html}", "--overwrite"),
    ("embed-coords-bad-suffix", EMBED + " --coords-out {tmp}/c.txt", "c.txt"),
    (
        "embed-two-outputs-same",
        "plot-embeddings -i {emb} -o {tmp}/a.html --coords-out {tmp}/a.html",
        "a.html",
    ),
    # --- plot-image-umap-embeddings ---
    ("mosaic-zoom-zero", MOSAIC + " -z 0", "--zoom"),
    ("mosaic-zoom-negative", MOSAIC + " -z -1", "--zoom"),
    ("mosaic-canvas-huge", MOSAIC + " --canvas 200000", "--canvas"),
    ("mosaic-canvas-zero", MOSAIC + " --canvas 0", "--canvas"),
    ("mosaic-unknown-sort-column", MOSAIC + " -sc nope", "nope"),
    (
        "mosaic-missing-slides",
        "plot-image-umap-embeddings -e {emb} -i {tmp}/none -o {tmp}/m.png",
        "none",
    ),
    (
        "mosaic-slide-not-found",
        "plot-image-umap-embeddings -e {emb} -i {empty_dir} -o {tmp}/m.png",
        "demo_ihc",
    ),
    (
        "mosaic-html-output",
        "plot-image-umap-embeddings -e {emb} -i {slide} -o {tmp}/m.html",
        "m.html",
    ),
    (
        "mosaic-missing-embeddings",
        "plot-image-umap-embeddings -e {tmp}/e.parquet -i {slide} -o {tmp}/m.png",
        "e.parquet",
    ),
    (
        "mosaic-over-existing",
        "plot-image-umap-embeddings -e {emb} -i {slide} -o {existing_png}",
        "--overwrite",
    ),
    # --- extract: the model ---
    (
        "extract-missing-model",
        "extract -m {tmp}/none.pt --slide {slide} -o {tmp}/o.parquet",
        "none.pt",
    ),
    (
        "extract-garbage-model",
        "extract -m {garbage_model} --slide {slide} -o {tmp}/o.parquet",
        "garbage.pt",
    ),
    (
        "extract-pickle-untrusted",
        "extract -m {pickled_model} --slide {slide} -o {tmp}/o.parquet",
        "--trust-model",
    ),
    (
        "extract-torchscript-untrusted",
        "extract -m {scripted_model} --slide {slide} -o {tmp}/o.parquet",
        "--trust-model",
    ),
    (
        "extract-state-dict-no-factory",
        "extract -m {weights} --slide {slide} -o {tmp}/o.parquet",
        "--factory",
    ),
    (
        "extract-factory-missing-module",
        "extract -m {weights} --factory nope.mod:fn --slide {slide} -o {tmp}/o.parquet",
        "nope.mod",
    ),
    (
        "extract-factory-no-colon",
        "extract -m {weights} --factory nofunction --slide {slide} -o {tmp}/o.parquet",
        "--factory",
    ),
    (
        "extract-factory-kwargs-not-json",
        EXTRACT + " --factory-kwargs {{n_classes:",
        "--factory-kwargs",
    ),
    ("extract-factory-kwargs-list", EXTRACT + " --factory-kwargs [1]", "--factory-kwargs"),
    ("extract-factory-kwargs-unknown", EXTRACT + ' --factory-kwargs {{"depth":9}}', "depth"),
    (
        "extract-card-unregistered-factory",
        "extract -m {weights} --model-card {foreign_card} --slide {slide} -o {tmp}/o.parquet",
        "factory 'PIL.__main__:Net' is not a registered architecture",
    ),
    (
        "extract-two-stage-unregistered-encoder",
        "extract -m {foreign_two_stage} --slide {slide} -o {tmp}/o.parquet",
        "encoder factory 'PIL.__main__:Net' is not a registered architecture",
    ),
    (
        "shap-card-unregistered-factory",
        SHAP.replace("--factory napari_pathviz._demo_model:build_demo_model", "")
        + " --model-card {foreign_card}",
        "module PIL.__main__ was not imported",
    ),
    (
        "extract-wrong-keys",
        "extract -m {wrong_keys} --factory napari_pathviz._demo_model:build_demo_model --slide {slide} -o {tmp}/o.parquet",
        "wrong_keys.pt",
    ),
    ("extract-std-zero", EXTRACT + " --std 0 0 0", "--std"),
    ("extract-input-size-zero", EXTRACT + " --input-size 0", "--input-size"),
    ("extract-unknown-feature-layer", EXTRACT + " --feature-layer nope", "nope"),
    # --- extract: the options ---
    ("extract-batch-zero", EXTRACT + " --batch-size 0", "--batch-size"),
    ("extract-batch-negative", EXTRACT + " --batch-size -3", "--batch-size"),
    ("extract-workers-negative", EXTRACT + " --workers -1", "--workers"),
    ("extract-level-too-high", EXTRACT + " --level 99", "--level"),
    ("extract-level-negative", EXTRACT + " --level -1", "--level"),
    ("extract-mpp-negative", EXTRACT + " --target-mpp -1", "--target-mpp"),
    (
        "extract-patch-size-zero",
        "extract " + MODEL + " --slide {slide} -o {tmp}/o.parquet --patch-size 0",
        "--patch-size",
    ),
    (
        "extract-min-tissue-five",
        "extract " + MODEL + " --slide {slide} -o {tmp}/o.parquet --min-tissue 5",
        "--min-tissue",
    ),
    ("extract-device-bogus", EXTRACT.replace("--device cpu", "--device tpu"), "--device"),
    ("extract-device-cuda-absent", EXTRACT.replace("--device cpu", "--device cuda"), "cuda"),
    (
        "extract-other-slide-rows",
        "extract " + MODEL + " --slide {slide} --patches {other_slide} -o {tmp}/o.parquet",
        "another_slide",
    ),
    (
        "extract-mixed-patch-sizes",
        "extract " + MODEL + " --slide {slide} --patches {mixed_sizes} -o {tmp}/o.parquet",
        "patch",
    ),
    (
        "extract-output-is-table",
        "extract " + MODEL + " --slide {slide} --patches {patches} -o {patches}",
        "patches.parquet",
    ),
    ("extract-store-is-output", EXTRACT + " --store {tmp}/out.parquet", "--store"),
    (
        "extract-bad-suffix",
        "extract " + MODEL + " --slide {slide} --patches {patches} -o {tmp}/o.txt",
        "o.txt",
    ),
    (
        "extract-output-exists",
        "extract " + MODEL + " --slide {slide} --patches {patches} -o {csv}",
        "--overwrite",
    ),
    (
        "extract-missing-slide",
        "extract " + MODEL + " --slide {tmp}/s.svs -o {tmp}/o.parquet",
        "s.svs",
    ),
    # a tile with byte count 0 reads as black: refused unless --allow-missing-tiles
    (
        "extract-missing-tile",
        "extract " + MODEL + " --slide {zero_tile} -o {tmp}/o.parquet --patch-size 64 "
        "--min-tissue 0 --device cpu",
        "--allow-missing-tiles",
    ),
    (
        "extract-model-raises-later",
        EXTRACT.replace("build_demo_model", "raises_in_a_later_batch").replace(
            "napari_pathviz._demo_model", "hostile_models"
        )
        + " --batch-size 16",
        "batch",
    ),
    (
        "extract-model-nan",
        EXTRACT.replace("build_demo_model", "outputs_nan_in_a_later_batch").replace(
            "napari_pathviz._demo_model", "hostile_models"
        )
        + " --batch-size 16",
        "nan",
    ),
    # --- shapley-plot, gradcam, sanity-check ---
    (
        "shap-top-text",
        "shapley-plot " + EXPLAIN + " -o {tmp}/m.png --top abc dab_positive",
        "--top",
    ),
    (
        "shap-top-negative",
        "shapley-plot " + EXPLAIN + " -o {tmp}/m.png --top -3 dab_positive",
        "--top",
    ),
    ("shap-top-unknown-column", "shapley-plot " + EXPLAIN + " -o {tmp}/m.png --top 3 nope", "nope"),
    ("shap-ids-out-of-range", SHAP + " --ids 99999", "--ids"),
    ("shap-ids-negative", SHAP + " --ids -1", "--ids"),
    ("shap-bs-negative", "shapley-plot " + EXPLAIN + " -o {tmp}/m.png -bs -1", "--batch_size"),
    ("shap-bs-zero", "shapley-plot " + EXPLAIN + " -o {tmp}/m.png -bs 0", "--batch_size"),
    ("shap-smoothing-negative", SHAP + " -l -1", "--local_smoothing"),
    ("shap-samples-zero", SHAP + " -ns 0", "--n_samples"),
    ("shap-samples-negative", SHAP + " -ns -4", "--n_samples"),
    ("shap-target-out-of-range", SHAP + " --target 7", "7"),
    ("shap-target-text", SHAP + " --target tumour", "--target"),
    ("shap-missing-background", SHAP + " --background {tmp}/b.npy", "b.npy"),
    ("shap-bad-background", SHAP + " --background {bad_npy}", "bad_background.npy"),
    ("shap-picture-background", SHAP + " --background {png}", "picture.png"),
    ("shap-chunk-zero", SHAP + " --chunk-size 0", "--chunk-size"),
    ("shap-samples-per-batch-zero", SHAP + " --samples-per-batch 0", "--samples-per-batch"),
    ("shap-csv-output", SHAP.replace("{tmp}/maps.png", "{tmp}/maps.csv"), "maps.csv"),
    ("shap-store-is-slide", SHAP + " --attributions-out {slide}", "demo_ihc.ome.zarr"),
    ("shap-damaged-store", SHAP + " --attributions-out {damaged_store}", "damaged_store.zarr"),
    ("shap-pickled-store", SHAP + " --attributions-out {pickled_store}", "pickled_store.zarr"),
    ("extract-damaged-store", EXTRACT + " --store {damaged_store}", "damaged_store.zarr"),
    ("shap-output-exists", SHAP.replace("{tmp}/maps.png", "{existing_png}"), "--overwrite"),
    ("shap-pickle-untrusted", SHAP.replace("{weights}", "{pickled_model}"), "--trust-model"),
    ("shap-other-slide-rows", SHAP.replace("{patches}", "{other_slide}"), "another_slide"),
    ("shap-unknown-db-size", SHAP.replace("{patches}", "{db}") + " --patch-size 999", "999"),
    ("shap-explain-output-bogus", SHAP + " --explain-output odds", "--explain-output"),
    ("shap-p-bogus", SHAP + " -p odds", "-p"),
    ("shap-seed-negative", SHAP + " --seed -1", "--seed"),
    ("shap-empty-table", SHAP.replace("{patches}", "{header_only}"), "table is empty"),
    ("shap-damaged-safetensors", SHAP.replace("{weights}", "{bad_safetensors}"), "is damaged"),
    ("extract-damaged-safetensors", EXTRACT.replace("{weights}", "{bad_safetensors}"), "header"),
    # one patch: its only possible background is itself (all-zero maps): refused
    (
        "shap-one-row-table",
        SHAP.replace("{patches}", "{one_row}").replace("--ids 0 1", "--ids 0"),
        "too few",
    ),
    ("cam-unknown-layer", CAM + " --layer nope", "nope"),
    (
        "cam-gradcampp-eps-negative",
        CAM + " --method gradcampp --gradcampp-eps -1e-6",
        "--gradcampp-eps",
    ),
    ("cam-gradcampp-eps-nan", CAM + " --method gradcampp --gradcampp-eps nan", "--gradcampp-eps"),
    ("cam-gradcampp-eps-text", CAM + " --method gradcampp --gradcampp-eps tiny", "--gradcampp-eps"),
    ("cam-gradcampp-eps-not-gradcampp", CAM + " --gradcampp-eps 1e-6", "--gradcampp-eps"),
    (
        "sanity-gradcampp-eps-negative",
        SANITY + " -mth gradcampp --gradcampp-eps -1",
        "--gradcampp-eps",
    ),
    ("cam-empty-selection", "gradcam " + EXPLAIN + " -o {tmp}/c.png --top 0 dab_positive", "empty"),
    ("cam-torchscript-untrusted", CAM.replace("{weights}", "{scripted_model}"), "--trust-model"),
    ("cam-method-bogus", CAM + " --method lime", "--method"),
    ("cam-discard-ratio-one", CAM + " --method rollout --discard-ratio 1", "--discard-ratio"),
    ("cam-discard-ratio-negative", CAM + " --method rollout --discard-ratio -0.1", "--discard"),
    ("cam-discard-ratio-nan", CAM + " --method rollout --discard-ratio nan", "--discard-ratio"),
    ("cam-discard-ratio-text", CAM + " --method rollout --discard-ratio most", "--discard-ratio"),
    ("cam-head-fusion-bogus", CAM + " --method rollout --head-fusion median", "--head-fusion"),
    ("cam-discard-ratio-not-rollout", CAM + " --discard-ratio 0.9", "--discard-ratio"),
    ("sanity-head-fusion-not-rollout", SANITY + " -mth chefer --head-fusion max", "--head-fusion"),
    ("sanity-target-each", SANITY + " --target each", "each"),
    ("sanity-png-output", SANITY.replace("sanity.csv", "sanity.png"), "sanity.png"),
    ("sanity-method-bogus", SANITY + " -mth lime", "--method"),
    ("sanity-seed-too-big", SANITY + " --seed 4294967296", "--seed"),
    # --- other tools' files: CLAM/TRIDENT HDF5, WSInfer, QuPath GeoJSON ---
    ("h5-without-coords", "plot-embeddings -i {h5_nocoords} -o {tmp}/u.html", "h5_nocoords.h5"),
    ("h5-rows-differ", "plot-embeddings -i {h5_mismatch} -o {tmp}/u.html", "h5_mismatch.h5"),
    ("h5-patch-outside", RENDER + " --patches {h5_outside}", "h5_outside.h5"),
    ("h5-declares-terabytes", "plot-embeddings -i {h5_hollow} -o {tmp}/u.html", "h5_hollow.h5"),
    ("h5-patches-declare-terabytes", RENDER + " --patches {h5_hollow}", "h5_hollow.h5"),
    ("wsinfer-oblong-patch", RENDER + " --patches {oblong}", "oblong.csv"),
    ("annotate-not-collection", ANNOTATE, "geo_feature.geojson"),
    ("annotate-coverage-zero", ANNOTATE + " --min-coverage 0", "--min-coverage"),
    ("annotate-geojson-nested-deeply", ANNOTATE.replace("geo_feature", "geo_deep"), "geo_deep"),
    (
        "annotate-h5-outside-slide",
        "annotate {h5_outside} --slide {slide} --geojson {geo_feature} -o {tmp}/l.csv",
        "h5_outside.h5",
    ),
    ("export-geojson-bad-where", GEOJSON + " --where nope>1", "nope"),
    ("export-geojson-bad-suffix", "export-geojson {patches} -o {tmp}/x.json", "x.json"),
    ("export-geojson-empty", GEOJSON + " --where dab_positive>2", "empty"),
    # --- demo: its data folder must be its own (a user's project is never overwritten) ---
    ("demo-data-dir-of-user-files", "demo --headless --data-dir {slide} --out {tmp}/d", ".pathviz"),
    # --- the whole command line ---
    ("unknown-command", "explain-everything {slide}", "explain-everything"),
    ("missing-required", "shapley-plot --slide {slide}", "required"),
]

_ANSI_OR_BAR = re.compile(r"^.*\r")  # tqdm redraws a line with \r; only the last draw stays


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, build_workspace(root)


def test_enough_cases():
    assert len(CASES) >= 120
    assert len({case for case, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "command", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(case, command, fragment, workspace, tmp_path, capsys):
    root, paths = workspace
    argv = command.format(**paths, tmp=tmp_path).split()
    before = snapshot(root)
    code = _exit_status(argv)
    assert code == 2, f"{case}: exit {code}"
    err = capsys.readouterr().err
    lines = [_ANSI_OR_BAR.sub("", line) for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if ": error: " in line]
    others = [line for line in lines if ": error: " not in line]
    assert len(errors) == 1, f"{case}: expected one error line, got {lines}"
    assert all(re.match(r"pathviz [\w-]+: warning: ", line) for line in others), others
    assert fragment.lower() in errors[0].lower(), f"{case}: {errors[0]!r} lacks {fragment!r}"
    assert snapshot(root) == before, f"{case}: a file the user did not name as output changed"


def _exit_status(argv: list[str]) -> int:
    """main's return value, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code
