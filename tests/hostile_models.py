"""Real models that fail the way users' models do, for the hostile-input suite: loaded through
``--factory`` with the demo model's weights, so the safe loading path is the one exercised."""

from __future__ import annotations

from napari_pathviz._demo_model import build_demo_model


def _counting(fault):
    model = build_demo_model()
    original = model.forward
    calls = {"n": 0}

    def forward(x):
        calls["n"] += 1
        return fault(original(x), calls["n"])

    model.forward = forward
    return model


def raises_in_a_later_batch():
    """Answers the first two calls (the shape check and batch one), then raises."""

    def fault(out, n):
        if n > 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return out

    return _counting(fault)


def outputs_nan_in_a_later_batch():
    def fault(out, n):
        return out * float("nan") if n > 2 else out

    return _counting(fault)
