"""SHAP expected gradients (shap.GradientExplainer's estimator), batched on the device.

For a patch x and a background set B, the attribution is the expectation over baselines b ~ B and
interpolation points alpha ~ U(0, 1) of grad f(b + alpha (x - b)) * (x - b). shap draws the
samples at random, one patch at a time, and does the arithmetic in numpy on the host. Here the
samples of many patches go through the model together in large batches, built on the device.

Stratified sampling (default): each baseline gets an equal share of the samples, and within a
baseline the interpolation points are stratified over [0, 1] (one uniform draw in each of m
equal strata). The estimator stays unbiased; its variance drops, so a given accuracy (e.g.
completeness within 5%) needs several times fewer samples than plain random sampling.

``local_smoothing`` (sigma) is shap's: every sample draws x' = x + N(0, sigma^2) and takes
grad f(b + alpha (x' - b)) * (x' - b), so the attributions sum to E f(x') - E f(b); with
smoothing, ``output_delta`` (and the completeness error) is taken against that, with f(x')
averaged over the same draws (one extra forward pass per sample).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ..errors import Cancelled, PathvizError, PathvizWarning
from ._target import explained_output, forward_batched, resolve_targets
from .result import AttributionResult


def default_batch_size(device) -> int:
    """Samples per forward/backward pass: large on a GPU to fill it; on a CPU a batch whose
    activations stay in cache (64 measured 1.6x faster than 256 on the demo model)."""
    return 256 if device.type == "cuda" else 64


def sample_plan(
    n_samples: int, n_background: int, stratified: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(baseline index, alpha) for each of ``n_samples`` samples of one patch."""
    if not stratified:
        return rng.integers(0, n_background, n_samples), rng.random(n_samples)
    baselines = rng.permutation(np.arange(n_samples) % n_background)
    alphas = np.empty(n_samples)
    for b in range(n_background):
        where = np.flatnonzero(baselines == b)
        m = len(where)
        if m:
            strata = (rng.permutation(m) + rng.random(m)) / m
            alphas[where] = strata
    return baselines, alphas


def expected_gradients(
    model,
    inputs,
    background,
    *,
    target="predicted",
    output: str = "none",
    n_samples: int = 400,
    local_smoothing: float = 0.0,
    stratified: bool = True,
    batch_size: int | None = None,
    seed: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> AttributionResult:
    """Expected-gradients attributions of ``inputs`` (N, C, H, W) against ``background``
    (B, C, H, W), both model-ready tensors on the model's device."""
    import torch

    if n_samples < 1:
        raise PathvizError(f"-ns/--n_samples must be positive, got {n_samples}")
    if batch_size is None:
        batch_size = default_batch_size(inputs.device)
    if batch_size < 1:
        raise PathvizError(f"--samples-per-batch must be positive, got {batch_size}")
    if len(background) < 1:
        raise PathvizError("expected gradients needs at least one background patch")
    if tuple(background.shape[1:]) != tuple(inputs.shape[1:]):
        raise PathvizError(
            f"background patches {tuple(background.shape[1:])} differ from the "
            f"explained patches {tuple(inputs.shape[1:])}"
        )
    model.eval()
    device = inputs.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(
        device_type="cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"
    )
    with torch.no_grad(), autocast:
        logits = forward_batched(model, inputs, batch_size).float()
        f_x = explained_output(logits, output)
        f_b = explained_output(forward_batched(model, background, batch_size).float(), output)
    targets = resolve_targets(target, logits)
    n = len(inputs)
    rng = np.random.default_rng(seed)
    plans = [sample_plan(n_samples, len(background), stratified, rng) for _ in range(n)]
    patch_index = torch.as_tensor(np.repeat(np.arange(n), n_samples), device=device)
    base_index = torch.as_tensor(np.concatenate([p[0] for p in plans]), device=device)
    alphas = torch.as_tensor(
        np.concatenate([p[1] for p in plans]), device=device, dtype=inputs.dtype
    )
    target_t = torch.as_tensor(targets, device=device)
    attributions = torch.zeros_like(inputs, dtype=torch.float32)
    noisy_outputs = torch.zeros(n, device=device)  # sum of f(x + noise) per patch, if smoothed
    generator = torch.Generator(device=device).manual_seed(seed)
    total = len(patch_index)

    def contribution(begin: int, end: int):
        p = patch_index[begin:end]
        x, b = inputs[p], background[base_index[begin:end]]
        if local_smoothing > 0:
            # shap's estimator: each sample noises the explained patch itself, and the noisy
            # patch is both the end of the path and the x in (x - b), so the samples average
            # to E f(x + noise) - E f(b) (noising the path point instead biases the sum).
            x = x + local_smoothing * torch.randn(x.shape, device=device, generator=generator)
        a = alphas[begin:end].view(-1, 1, 1, 1)
        sample = b + a * (x - b)
        sample = sample.contiguous(memory_format=memory_format).requires_grad_(True)
        with autocast:
            out = explained_output(model(sample).float(), output)
        chosen = out.gather(1, target_t[p].view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, sample)
        f_noisy = None
        if local_smoothing > 0:
            # The samples sum to E f(x + noise) - E f(b): estimate f(x + noise) on the same
            # draws, so that the completeness error measures the estimator, not the smoothing.
            with torch.no_grad(), autocast:
                f_all = explained_output(model(x.contiguous(memory_format=memory_format)), output)
            f_noisy = f_all.float().gather(1, target_t[p].view(-1, 1)).squeeze(1)
        return p, (grad.float() * (x - b).float()).detach(), f_noisy

    start = 0
    while start < total:
        if cancelled is not None and cancelled():
            raise Cancelled("attribution cancelled")
        stop = min(start + batch_size, total)
        try:
            p, contrib, f_noisy = contribution(start, stop)
        except torch.OutOfMemoryError:
            # Halve the batch and retry the same samples: nothing computed is lost.
            if batch_size == 1:
                raise PathvizError("out of device memory even with one sample per batch") from None
            batch_size = max(1, batch_size // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(
                f"out of device memory: batch size lowered to {batch_size}",
                PathvizWarning,
                stacklevel=2,
            )
            continue
        attributions.index_add_(0, p, contrib)
        if f_noisy is not None:
            noisy_outputs.index_add_(0, p, f_noisy)
        start = stop
        if progress is not None:
            progress(start, total)
    attributions /= n_samples
    per_channel = attributions.cpu().numpy()
    if local_smoothing > 0:
        f_end = noisy_outputs / n_samples
    else:
        f_end = f_x.gather(1, target_t.view(-1, 1)).squeeze(1)
    delta = (f_end - f_b.mean(dim=0)[target_t]).cpu().numpy()
    total_attr = per_channel.reshape(n, -1).sum(axis=1)
    error = np.abs(total_attr - delta) / np.maximum(np.abs(delta), 1e-12)
    return AttributionResult(
        method="gradient",
        maps=per_channel.sum(axis=1),
        targets=targets,
        logits=logits.cpu().numpy(),
        probabilities=_probabilities(logits),
        per_channel=per_channel,
        completeness_error=error,
        output_delta=delta,
        metadata={
            "n_samples": n_samples,
            "stratified": stratified,
            "output": output,
            "local_smoothing": local_smoothing,
            "n_background": len(background),
            "batch_size": batch_size,
            "bf16": bf16,
            "channels_last": channels_last,
        },
    )


def _probabilities(logits) -> np.ndarray:
    import torch

    probs = torch.softmax(logits, 1) if logits.shape[1] > 1 else torch.sigmoid(logits)
    return probs.cpu().numpy()
