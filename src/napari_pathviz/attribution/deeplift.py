"""DeepLIFT / DeepSHAP (rescale rule, averaged over background references) that works on real
ResNet-style models.

captum's DeepLift needs each nonlinearity to be its own module, called once, and not in place;
shap's DeepExplainer fails on the same patterns. torchvision's BasicBlock (and our demo model)
reuses one in-place ReLU twice per block and adds the residual in place. We therefore explain a
functionally equal copy of the model, rewritten with torch.fx: every ReLU call site gets its own
out-of-place ReLU module and in-place adds become plain adds. The copy computes the same outputs
(checked), and captum's DeepLiftShap runs on it.
"""

from __future__ import annotations

import copy
import operator
import warnings

import numpy as np

from ..errors import PathvizError
from ._target import explained_output, forward_batched, resolve_targets
from .result import AttributionResult

DEFAULT_BATCH_SIZE = 8  # patches per call; captum runs each against every reference

_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.imul: operator.mul}
_INPLACE_METHODS = {"relu_": "relu", "add_": "add", "mul_": "mul"}


def functional_copy(model):
    """A torch.fx copy of ``model`` with one out-of-place ReLU module per call site and no
    in-place arithmetic, in eval mode."""
    import torch
    import torch.nn.functional as F
    from torch import fx, nn

    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:
        raise PathvizError(
            f"DeepLIFT: the model cannot be traced by torch.fx to rewrite its "
            f"in-place operations ({type(exc).__name__}: {exc})"
        ) from exc
    count = 0
    for node in list(graph_module.graph.nodes):
        relu_site = (
            (
                node.op == "call_module"
                and isinstance(graph_module.get_submodule(node.target), nn.ReLU)
            )
            or (node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_))
            or (node.op == "call_method" and node.target in ("relu", "relu_"))
        )
        if relu_site:
            name = f"_deeplift_relu_{count}"
            count += 1
            graph_module.add_submodule(name, nn.ReLU(inplace=False))
            with graph_module.graph.inserting_after(node):
                replacement = graph_module.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(replacement)
            graph_module.graph.erase_node(node)
        elif node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
            node.target = _INPLACE_FUNCTIONS[node.target]
        elif node.op == "call_method" and node.target in _INPLACE_METHODS:
            node.target = _INPLACE_METHODS[node.target]
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()  # the shared in-place ReLUs are gone
    graph_module.recompile()
    return graph_module.eval()


class _Explained:
    """The model followed by the explained output (none/sigmoid/softmax), as one module."""

    def __new__(cls, model, output: str):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return explained_output(self.model(x), output)

        return Wrapped().eval()


def deeplift(
    model,
    inputs,
    background,
    *,
    target="predicted",
    output: str = "none",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress=None,
    cancelled=None,
) -> AttributionResult:
    """DeepLIFT attributions (rescale rule) of ``inputs`` averaged over the ``background``
    references (DeepSHAP). They sum to f(x) - mean f(reference) up to float rounding."""
    import torch
    from captum.attr import DeepLiftShap

    from ..errors import Cancelled

    if len(background) < 2:
        raise PathvizError("DeepLIFT (DeepSHAP) needs at least two background patches")
    model.eval()
    with torch.no_grad():
        logits = forward_batched(model, inputs, batch_size).float()
        f_x = explained_output(logits, output)
        f_b = explained_output(forward_batched(model, background, batch_size).float(), output)
    targets = resolve_targets(target, logits)
    rewritten = functional_copy(model)
    with torch.no_grad():
        if not torch.allclose(rewritten(inputs[:2]), model(inputs[:2]), rtol=1e-4, atol=1e-5):
            raise PathvizError("DeepLIFT: the rewritten model does not compute the same outputs")
    explainer = DeepLiftShap(_Explained(rewritten, output))
    chunks = []
    for start in range(0, len(inputs), batch_size):
        if cancelled is not None and cancelled():
            raise Cancelled("attribution cancelled")
        x = inputs[start : start + batch_size]
        with warnings.catch_warnings():
            # captum warns that it hooks the ReLU modules: on the rewritten copy that is safe.
            warnings.simplefilter("ignore", UserWarning)
            chunk = explainer.attribute(
                x,
                baselines=background,
                target=torch.as_tensor(targets[start : start + batch_size], device=x.device),
            )
        chunks.append(chunk.detach().float().cpu().numpy())
        if progress is not None:
            progress(min(start + batch_size, len(inputs)), len(inputs))
    per_channel = np.concatenate(chunks)
    target_t = torch.as_tensor(targets, device=f_x.device)
    delta = (f_x.gather(1, target_t.view(-1, 1)).squeeze(1) - f_b.mean(0)[target_t]).cpu().numpy()
    total = per_channel.reshape(len(per_channel), -1).sum(axis=1)
    error = np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)
    probs = torch.softmax(logits, 1) if logits.shape[1] > 1 else torch.sigmoid(logits)
    return AttributionResult(
        method="deep",
        maps=per_channel.sum(axis=1),
        targets=targets,
        logits=logits.cpu().numpy(),
        probabilities=probs.cpu().numpy(),
        per_channel=per_channel,
        completeness_error=error,
        output_delta=delta,
        metadata={"output": output, "n_background": len(background), "rule": "rescale"},
    )
