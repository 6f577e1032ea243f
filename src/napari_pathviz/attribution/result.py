"""What every attribution method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INCOMPLETE = 0.05  # a relative completeness error above this is reported to the user


@dataclass
class AttributionResult:
    """Signed attribution maps and the model's view of each explained patch.

    ``maps[i]`` (H x W) is the attribution of row i for its explained target, summed over
    colour channels; ``per_channel[i]`` (C x H x W) keeps the channels where the method has them.
    Values are in the units of the explained output and comparable across patches (no per-map
    normalisation; that is a display choice).
    """

    method: str
    maps: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    per_channel: np.ndarray | None = None
    completeness_error: np.ndarray | None = None  # |sum(attr) - (f(x) - E f(b))| / |f(x) - E f(b)|
    # what the attributions should sum to: f(x) - E f(b), or E f(x + noise) - E f(b) when
    # expected gradients smooth the input
    output_delta: np.ndarray | None = None
    patch_index: np.ndarray | None = (
        None  # the explained patch of each row (None: row i is patch i)
    )
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.maps)

    def patch_of_rows(self) -> np.ndarray:
        """The explained patch of each row: several rows share a patch when every class of it
        was explained (target "each")."""
        if self.patch_index is None:
            return np.arange(len(self))
        return np.asarray(self.patch_index)

    def incomplete_rows(self, threshold: float = INCOMPLETE) -> np.ndarray:
        """The rows whose attributions miss f(x) - E f(b) by more than ``threshold`` (relative):
        their maps do not add up to what they explain, and the user must be told. Empty when
        the method has no completeness (Grad-CAM)."""
        if self.completeness_error is None:
            return np.array([], dtype=np.int64)
        error = np.asarray(self.completeness_error, dtype=np.float64)
        return np.flatnonzero(~(error <= threshold))  # NaN counts as incomplete

    def completeness_warning(self, threshold: float = INCOMPLETE) -> str | None:
        """One line for the user when some rows are incomplete, else None."""
        rows = self.incomplete_rows(threshold)
        if not len(rows):
            return None
        worst = np.nanmax(np.asarray(self.completeness_error, dtype=np.float64)[rows])
        return (
            f"{len(rows)} of {len(self)} maps incomplete: their attributions miss "
            f"f(x) - E f(background) by more than {threshold:.0%} (worst relative error {worst:.2g})"
        )
