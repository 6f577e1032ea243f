"""The output being explained: a model's logit or probability for a chosen class."""

from __future__ import annotations

import numpy as np

from ..errors import PathvizError

OUTPUTS = ("none", "sigmoid", "softmax")


def explained_output(logits, output: str):
    """Applies PathFlowAI's -p choice to logits (N, K): none, sigmoid or softmax."""
    import torch

    if output == "softmax":
        return torch.softmax(logits, dim=1)
    if output == "sigmoid":
        return torch.sigmoid(logits)
    if output == "none":
        return logits
    raise PathvizError(f"-p/--output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def forward_checked(model, x):
    """The model's logits for ``x``, checked to be (N, classes)."""
    import torch

    try:
        out = model(x)
    except torch.OutOfMemoryError:
        raise  # the callers halve their batch and retry
    except RuntimeError as exc:
        raise PathvizError(
            f"the model rejects patches of shape {tuple(x.shape[1:])} "
            f"({str(exc).splitlines()[0][:160]})"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PathvizError(f"the model's output must be (patches, classes), found {shape}")
    finite = torch.isfinite(out.detach()).all(dim=1)
    if not bool(finite.all()):
        raise NonFiniteOutput(np.flatnonzero(~finite.cpu().numpy()), len(out))
    return out


class NonFiniteOutput(PathvizError):
    """The model gave NaN or infinity for the patches at ``rows`` of its input; callers that
    know the patches' keys re-raise naming them (see stored.explain)."""

    def __init__(self, rows: np.ndarray, n: int):
        self.rows = np.asarray(rows)
        shown = ", ".join(map(str, self.rows[:3])) + (" ..." if len(self.rows) > 3 else "")
        super().__init__(
            f"the model's output is NaN or infinite for {len(self.rows)} of {n} patches "
            f"(rows {shown})"
        )


def forward_batched(model, x, batch_size: int):
    """The model's checked logits for ``x`` in batches of ``batch_size`` (the whole input at
    once could exhaust device memory that the attribution batches fit in)."""
    import torch

    outputs = []
    for i in range(0, len(x), batch_size):
        try:
            outputs.append(forward_checked(model, x[i : i + batch_size]))
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(exc.rows + i, len(x)) from None
    return torch.cat(outputs)


def resolve_targets(target, logits) -> np.ndarray:
    """``target``: "predicted" (argmax), a class index, or a sequence with one index per patch."""
    n, k = logits.shape
    if isinstance(target, str):
        if target != "predicted":
            raise PathvizError(
                f"target must be 'predicted', a class index or one per patch, got {target!r}"
            )
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)
    targets = np.broadcast_to(np.asarray(target, np.int64), (n,)).copy()
    bad = np.flatnonzero((targets < 0) | (targets >= k))
    if bad.size:
        raise PathvizError(
            f"target class {targets[bad[0]]} is out of range: the model has {k} outputs (0-{k - 1})"
        )
    return targets
