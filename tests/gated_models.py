"""The demo model held at a gate, for tests of two commands running at once: its forward
says it has started (``$PATHVIZ_TEST_GATE.entered``) and then waits until the file
``$PATHVIZ_TEST_GATE`` exists. Loaded through ``--factory`` with the demo model's weights."""

from __future__ import annotations

import os
import time
from pathlib import Path

from napari_pathviz._demo_model import build_demo_model


def waits_at_the_gate():
    model = build_demo_model()
    original = model.forward
    gate = Path(os.environ["PATHVIZ_TEST_GATE"])

    def forward(x):
        gate.with_name(gate.name + ".entered").touch()
        deadline = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return original(x)

    model.forward = forward
    return model
