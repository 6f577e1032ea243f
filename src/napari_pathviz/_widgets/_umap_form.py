"""The embedding explorer's UMAP run form: the embeddings file first, the UMAP parameters in a
collapsed "Advanced" section, and the job that runs in a worker thread and a child process."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox

from ..embedding_large import FIT_SAMPLE_ABOVE, FIT_SAMPLE_SIZE
from ._compact import collapsed_section, path_field, path_text, special_value_text


class UmapForm:
    """Embeddings file and UMAP parameters; ``params()`` feeds umap_embed."""

    # Exposed on the widget under the same names (the demo and the tests reach them there).
    FIELDS = (
        "embeddings_path",
        "keys_path",
        "trust_pickle",
        "components",
        "n_neighbors",
        "min_dist",
        "metric",
        "pca",
        "seed",
        "background_column",
        "max_background",
        "knn",
        "full_fit",
    )

    def __init__(self, numeric_columns):
        self.embeddings_path = path_field(
            "Embeddings", tooltip=".parquet/.csv, .npy/.npz (+ keys), PathFlowAI .pkl"
        )
        self.keys_path = path_field("Keys (.npy)", tooltip="key table for a bare array")
        self.trust_pickle = CheckBox(
            text="Trust this pickle (it can run code)",
            value=False,
            tooltip="PathFlowAI's embeddings.pkl is a pickle: load it only if you trust it",
        )
        self.components = ComboBox(label="Components", choices=[2, 3], value=2)
        self.n_neighbors = SpinBox(label="n_neighbors", value=15, min=2, max=500)
        self.min_dist = FloatSpinBox(label="min_dist", value=0.1, min=0.0, max=1.0, step=0.05)
        self.metric = ComboBox(
            label="Metric",
            value="euclidean",
            choices=["euclidean", "cosine", "manhattan", "correlation"],
        )
        self.pca = SpinBox(
            label="PCA dims",
            value=50,
            min=0,
            max=4096,
            tooltip="reduce to this many dimensions first when there are more; 0 = off",
        )
        special_value_text(self.pca, "0 = off")
        self.seed = SpinBox(
            label="Seed",
            value=-1,
            min=-1,
            max=2**31 - 1,
            tooltip="-1 = none: not reproducible, umap-learn runs multi-threaded",
        )
        special_value_text(self.seed, "-1 = none")
        self.background_column = ComboBox(
            label="Background col",
            choices=numeric_columns,
            nullable=True,
            tooltip="drop patches with more than Max bg area of this column (PathFlowAI's -rb)",
        )
        self.max_background = FloatSpinBox(
            label="Max bg area", value=0.05, min=0, max=1, step=0.05, tooltip="PathFlowAI's -ma"
        )
        self.knn = ComboBox(label="k-NN", choices=["auto", "nndescent", "torch"], value="auto")
        self.full_fit = CheckBox(
            text="Full UMAP fit (slow)",
            value=False,
            tooltip=f"above {FIT_SAMPLE_ABOVE:,} patches UMAP is fitted on {FIT_SAMPLE_SIZE:,} of "
            "them and the rest are placed among them (trustworthiness within 0.003, but about "
            "half of each patch's 15 nearest neighbours kept: README, UMAP); tick to fit every "
            "patch",
        )
        self.advanced, _ = collapsed_section(
            "Advanced: UMAP parameters, keys, pickles",
            [
                self.keys_path,
                self.trust_pickle,
                self.components,
                self.n_neighbors,
                self.min_dist,
                self.metric,
                self.pca,
                self.seed,
                self.background_column,
                self.max_background,
                self.knn,
                self.full_fit,
            ],
        )

    def params(self):
        from ..embedding import UMAPParams

        return UMAPParams(
            n_components=int(self.components.value),
            n_neighbors=self.n_neighbors.value,
            min_dist=self.min_dist.value,
            metric=self.metric.value,
            pca=self.pca.value or None,
            random_state=None if self.seed.value < 0 else self.seed.value,
            fit_sample=0 if self.full_fit.value else None,  # None: sampled above 200,000
        )

    def job(self, path, patches) -> UmapJob:
        """``path``: an embeddings file, or the layer's own RawEmbeddings (layer_embeddings)."""
        return UmapJob(
            path,
            path_text(self.keys_path) or None,
            self.trust_pickle.value,
            patches,
            self.background_column.value,
            self.max_background.value,
            self.params(),
            self.knn.value,
        )


class UmapJob:
    """The work of one Run, done in a worker thread: load, join, filter, UMAP. The UMAP itself
    runs in a child process (numba holds the GIL for seconds: in a thread it froze the GUI),
    the last run's if it is kept, else one started first so that it loads umap while the
    embeddings are read here; its first look
    (fitted on a sample) goes out as a third progress value, a :class:`FirstLook`."""

    def __init__(self, path, keys, trust, patches, background, max_area, params, knn):
        self.path, self.keys, self.trust, self.patches = path, keys, trust, patches
        self.background, self.max_area, self.params, self.knn = background, max_area, params, knn

    def run(self, progress, cancelled):
        """(embeddings, coordinates, sample): ``sample`` is how many patches the layout was
        fitted on when it was fitted on a sample (the rest placed), else None."""
        from ..embedding_large import fit_sample_size
        from ..umap_process import kept_child

        with kept_child() as child:  # the last run's child, umap compiled, if still there
            es = self._load()
            coords = None
            for update in child.run(es.features, self.params, knn=self.knn, cancelled=cancelled):
                if update.final:
                    coords = update.coords
                elif update.coords is not None:
                    progress(update.fraction, update.stage, FirstLook(es, update.coords))
                else:
                    progress(update.fraction, update.stage)
        return es, coords, fit_sample_size(self.params.fit_sample, len(es.features))

    def _load(self):
        import warnings

        from ..embedding import join_embeddings, load_embeddings, remove_background

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report carries them to the GUI
            if isinstance(self.path, str):
                es = load_embeddings(
                    self.path, keys=self.keys, trust_pickle=self.trust, patches=self.patches
                )
            else:  # the feat_* columns of the patches layer (Model inference's embeddings)
                es = join_embeddings(self.path, self.patches)
        if self.background:
            es = remove_background(es, self.background, self.max_area)
        return es


class FirstLook:
    """A first look at the UMAP (see :mod:`napari_pathviz.umap_first_look`): the embeddings
    and their coordinates, the same rows as the full result that replaces it."""

    def __init__(self, es, coords):
        self.es, self.coords = es, coords


def layer_embeddings(features, name: str):
    """The embeddings a patches layer carries itself (``feat_*`` columns, as Model inference's
    "Also embeddings" writes them) as RawEmbeddings, or None when it has none."""
    from ..io.embeddings import RawEmbeddings, feature_columns

    columns = [c for c in feature_columns(features.columns) if str(c).startswith("feat_")]
    if not columns:
        return None
    rows = features.drop(columns=columns).reset_index(drop=True)
    matrix = features[columns].to_numpy(dtype="float32")
    return RawEmbeddings(rows, matrix, f"{name} (its feat_* columns)")
