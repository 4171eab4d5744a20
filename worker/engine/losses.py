"""The loss terms of Gatys et al. style transfer, exactly as the seed notebook defines them, and a moments style loss.

Each term comes in a batched form that returns one value per picture of a batch (so jobs optimised
together never mix their gradients); the seed's terms also in the notebook's batch-1 form. Gram
matrices and every loss are computed in fp32 whatever precision the network ran in: a bf16 Gram
matrix keeps three decimal digits, too few to tell a converged picture from a nearly converged one.

`moment_losses` is the style loss of `style_loss="moments"`: the squared 2-Wasserstein distance between
the Gaussians with the mean and covariance of a picture's features and of the style's (as in
crowsonkb/style-transfer-pytorch), where the Gram loss compares uncentred second moments alone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from .precision import native_bf16


def gram_matrices(features: torch.Tensor) -> torch.Tensor:
    """Return each picture's channel Gram matrix, (N, C, H, W) -> (N, C, C) in fp32, divided by channels x pixels."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    if features.dtype == torch.bfloat16:
        return _Bf16Gram.apply(flat)
    return _Fp32Gram.apply(flat.float())


class _Fp32Gram(torch.autograd.Function):
    """The Gram matrices of fp32 features, (N, C, P) -> (N, C, C), with a one-product backward.

    Autograd's backward of F F^T takes two products, one per operand, and adds them; dF = S F with
    S = (dG + dG^T) / (C P) is one product, a third less of a Gram's arithmetic and no sum of two feature maps.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return torch.bmm(flat, flat.transpose(1, 2)).div_(flat.shape[1] * flat.shape[2])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors  # type: ignore[attr-defined]  # as in _Bf16Gram.backward
        symmetric = (grad + grad.transpose(1, 2)) / (flat.shape[1] * flat.shape[2])
        return torch.bmm(symmetric, flat)


# Devices where torch multiplies bf16 matrices into an fp32 result directly (`bmm(..., out_dtype=torch.float32)`,
# CUDA only, in torch 2.8 and later).
MIXED_PRODUCT_DEVICES = ("cuda",) if hasattr(torch.ops.aten.bmm, "dtype") else ()


def bf16_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the batched product of bf16 matrices in fp32: exact products, fp32 sums, an fp32 result.

    On a GPU one tensor-core product reads the bf16 operands as they are; elsewhere they are widened to fp32
    first, which gives the same arithmetic (a product of two bf16 numbers is exact in fp32) more slowly.
    """
    if a.device.type == "cuda":
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


class _Bf16Gram(torch.autograd.Function):
    """The Gram matrices of bf16 features, (N, C, P) -> (N, C, C), summed in fp32, with a one-product backward.

    Forward: G = F F^T / (C P), from exact bf16 products summed in fp32, which no realistic feature map
    overflows (it would take values past ~1e15). Autograd's backward of that expression takes two products,
    one per operand, and adds them; the gradient needs one: dF = S F with S = (dG + dG^T) / (C P), computed
    as F^T S so that it comes out in the features' own memory layout (for channels-last features F^T is the
    contiguous one). Where bf16 products are native (a GPU), F is kept in bf16 and S, fp32, enters a bf16
    product as two bf16 matrices, its rounding and the rest: the gradient keeps S's fp32 precision and is
    rounded to bf16 once, at the end, as autograd's is (S rounded to bf16 alone would double that error).
    On a CPU F is kept in bf16 and widened a slice of pixels at a time in each pass (`_sliced_gram`,
    `_sliced_gram_backward`); elsewhere it is widened once and kept, as autograd kept it.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, flat: torch.Tensor) -> torch.Tensor:
        if flat.device.type in MIXED_PRODUCT_DEVICES:
            kept = flat
            products = bf16_products(flat, flat.transpose(1, 2))
        elif flat.device.type == "cpu":
            kept = flat
            products = _sliced_gram(flat)
        else:
            kept = flat.float()
            products = torch.bmm(kept, kept.transpose(1, 2))
        ctx.save_for_backward(kept)
        return products.div_(flat.shape[1] * flat.shape[2])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (kept,) = ctx.saved_tensors  # type: ignore[attr-defined]  # the backward context has it; torch's FunctionCtx annotation does not
        symmetric = (grad + grad.transpose(1, 2)) / (kept.shape[1] * kept.shape[2])
        if kept.dtype == torch.bfloat16 and kept.device.type not in MIXED_PRODUCT_DEVICES:
            return _sliced_gram_backward(kept, symmetric)
        rows = kept.transpose(1, 2)  # (N, P, C)
        if kept.dtype == torch.bfloat16:
            high = symmetric.to(torch.bfloat16)
            low = (symmetric - high.float()).to(torch.bfloat16)
            # F^T S_high + F^T S_low as one product, [F^T, F^T] [S_high; S_low]: its sums stay in fp32 and its result
            # is rounded to bf16 once. Two products added in fp32 would move about 2.5x the bytes.
            product = torch.bmm(torch.cat([rows, rows], dim=2), torch.cat([high, low], dim=1))
        else:
            product = torch.bmm(rows, symmetric).to(torch.bfloat16)
        return product.transpose(1, 2)


# Pixels of bf16 features a CPU widens to fp32 at a time for a Gram product or its backward: 4096 pixels of up
# to 64 channels stay in a core's cache between the widening and the product. A whole 300x450 relu1_1 widened
# is 34 MB, which autograd kept for the backward pass: in slices nothing is kept, and a bf16 job's peak memory on
# a CPU is about a quarter lower (`python -m bench.memory --device cpu`). Alone, that layer's Gram and gradient
# took 18 ms instead of 40 on the 2-core development CPU; within a whole iteration the gain was within noise.
CPU_PIXELS_PER_SLICE = 4096


@functools.cache
def _cpu_has_native_bf16() -> bool:
    return native_bf16("cpu")


@contextlib.contextmanager
def _bf16_cpu_products() -> Iterator[None]:
    """Let oneDNN multiply fp32 matrices on a CPU as bf16 with fp32 sums (AMX or AVX-512 BF16 instructions).

    Only for operands that hold bf16 values already, which the conversion leaves as they are: the products
    stay exact and the sums fp32, as in an fp32 product. The setting is the process's, so it is put back at once.
    """
    if not _cpu_has_native_bf16():
        # Nothing to gain where bf16 products would be emulated, and nothing to risk on such a CPU.
        yield
        return
    settings = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # set when torch.backends.mkldnn is imported; absent from its annotations
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        yield
    finally:
        settings.fp32_precision = before


def _widened_slices(flat: torch.Tensor) -> Iterator[tuple[int, slice, torch.Tensor]]:
    """Yield (picture, pixels, those pixels' features in fp32 (C, S)) for bf16 features (N, C, P), CPU_PIXELS_PER_SLICE at a time."""
    for picture in range(flat.shape[0]):
        for start in range(0, flat.shape[2], CPU_PIXELS_PER_SLICE):
            pixels = slice(start, start + CPU_PIXELS_PER_SLICE)
            yield picture, pixels, flat[picture, :, pixels].float()


def _sliced_gram(flat: torch.Tensor) -> torch.Tensor:
    """Return F F^T in fp32 for bf16 features (N, C, P), widening CPU_PIXELS_PER_SLICE pixels at a time.

    The products run as bf16 products with fp32 sums, which for bf16 operands is an fp32 product's arithmetic:
    a little faster than fp32 products on a CPU with AVX-512 BF16 alone (`python -m bench.cpu_gram`), and on
    one with AMX what its matrix units are for.
    """
    batch, channels, _pixels = flat.shape
    products = torch.zeros(batch, channels, channels, dtype=torch.float32)
    with _bf16_cpu_products():
        for picture, _part, widened in _widened_slices(flat):
            products[picture].addmm_(widened, widened.T)
    return products


def _sliced_gram_backward(flat: torch.Tensor, symmetric: torch.Tensor) -> torch.Tensor:
    """Return S F for bf16 features F (N, C, P) and fp32 S (N, C, C), rounded to bf16 once, in F's memory layout."""
    batch, channels, pixels = flat.shape
    rows = torch.empty(batch, pixels, channels, dtype=torch.bfloat16)  # (F^T S), whose transpose is channels-last
    for picture, part, widened in _widened_slices(flat):
        rows[picture, part] = widened.T @ symmetric[picture]
    return rows.transpose(1, 2)


def content_losses(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return each picture's mean squared difference between its features and its content target, (N,)."""
    return torch.square(features.float() - targets.detach()).flatten(1).mean(1)


def style_losses(features: torch.Tensor, target_grams: torch.Tensor) -> torch.Tensor:
    """Return each picture's mean squared difference between its Gram matrix and its target Gram matrix, (N,)."""
    return torch.square(gram_matrices(features) - target_grams.detach()).flatten(1).mean(1)


def feature_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each picture's channel means (N, C) and channel covariance over its pixels (N, C, C), in fp32 (fp64 for fp64 features)."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    means = flat.mean(-1)
    # Centred before the product (not E[xx^T] - mean mean^T after it): the subtraction would cancel most
    # digits of fp32 where the means are large against the spread, as ReLU features' often are.
    centred = (flat - means.unsqueeze(-1)) / flat.shape[-1] ** 0.5
    return means, torch.bmm(centred, centred.transpose(1, 2))


# A covariance's square root is only needed to within what fp32 holds, and Newton-Schulz (`root_traces`)
# converges on an eigenvalue at a speed set by its ratio to the largest. So both covariances of the moments
# loss get a ridge: this fraction of their Frobenius norm (at least their largest eigenvalue, and cheap and
# differentiable) added to their diagonal, plus an absolute floor that keeps a flat picture's positive. Each
# then has a condition number under 1/RIDGE, their product under 1/RIDGE^2 = 1e6, whatever the picture. On the
# seed's pair at 300x450 (real VGG16) the ridge moves the content's distance to the style by -6 to +1 % a layer,
# and fp32 computes it within 1e-5 of the layer's energy (fp64 eigendecomposition for reference).
RIDGE = 1e-3
RIDGE_FLOOR = 1e-8
# Coupled Newton-Schulz steps in `root_traces`. A small eigenvalue's share of the Frobenius norm grows 9/4-fold a
# step until it converges: 24 steps bring every eigenvalue of a matrix conditioned 1e6 (over up to 512 channels)
# to convergence. Iterating on far worse conditioned matrices is what fp32 cannot do: unregularised, relu1_1 of
# a photograph (conditioned ~1e10) lost all precision by step 25.
ROOT_ITERATIONS = 24


def with_ridge(covariances: torch.Tensor) -> torch.Tensor:
    """Return covariances (N, C, C) with RIDGE times their Frobenius norm, plus RIDGE_FLOOR, added to their diagonals."""
    ridges = RIDGE * torch.linalg.matrix_norm(covariances) + RIDGE_FLOOR
    return covariances + ridges[:, None, None] * torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)


class _RootTrace(torch.autograd.Function):
    """tr(A^(1/2)) of a batch of symmetric positive semi-definite matrices, (N, C, C) -> (N,).

    Newton-Schulz is matrix products alone: batched, fp32 throughout, and capturable in a CUDA graph,
    where an eigendecomposition syncs with the host. Its second iterate converges to A^(-1/2), which is
    twice the gradient of tr(A^(1/2)), so the backward pass is one product and nothing is kept of the
    steps. Where an eigenvalue is too small to converge the gradient stays finite (bounded by 1.5^steps).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, matrices: torch.Tensor) -> torch.Tensor:
        # Scaled to Frobenius norm 1, every eigenvalue lies in [0, 1], where the iteration converges.
        norms = torch.linalg.matrix_norm(matrices).clamp_min(torch.finfo(matrices.dtype).tiny)
        eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device).expand_as(matrices)
        root, inverse_root = matrices / norms[:, None, None], eye
        for _ in range(ROOT_ITERATIONS):
            step = 1.5 * eye - 0.5 * (inverse_root @ root)
            root, inverse_root = root @ step, step @ inverse_root
        ctx.save_for_backward(inverse_root, norms)
        return root.diagonal(dim1=-2, dim2=-1).sum(-1) * norms.sqrt()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        inverse_root, norms = ctx.saved_tensors  # type: ignore[attr-defined]  # as in _Bf16Gram.backward
        # Symmetric in exact arithmetic; averaged with its transpose so rounding leaves no skew part.
        symmetric = (inverse_root + inverse_root.transpose(-2, -1)) / (4 * norms.sqrt()[:, None, None])
        return grad[:, None, None] * symmetric


def root_traces(matrices: torch.Tensor) -> torch.Tensor:
    """Return the trace of the square root of each symmetric positive semi-definite matrix of a batch, (N, C, C) -> (N,)."""
    return _RootTrace.apply(matrices)


def moment_losses(
    features: torch.Tensor, target_means: torch.Tensor, target_covariances: torch.Tensor, target_roots: torch.Tensor
) -> torch.Tensor:
    """Return each picture's squared 2-Wasserstein distance to its target Gaussian, per channel, (N,).

    W2^2 = |m - m_t|^2 + tr(S + S_t - 2 (S_t^(1/2) S S_t^(1/2))^(1/2)) for features of mean m and covariance S
    against a target of mean m_t and covariance S_t, divided by the channels. Both covariances have their
    ridge (`with_ridge`): `target_covariances` already, and `target_roots` are their square roots. The same
    ridge on both sides keeps a picture's distance to its own statistics zero.
    """
    means, covariances = feature_moments(features)
    covariances = with_ridge(covariances)
    roots = target_roots.detach()
    cross = root_traces(roots @ covariances @ roots)
    traces = covariances.diagonal(dim1=-2, dim2=-1).sum(-1) + target_covariances.detach().diagonal(dim1=-2, dim2=-1).sum(-1)
    distances = (means - target_means.detach()).square().sum(-1) + traces - 2 * cross
    return distances / means.shape[-1]


def tv_losses(images: torch.Tensor) -> torch.Tensor:
    """Return each picture's anisotropic total variation: half the sum of its mean absolute vertical and horizontal steps."""
    vertical = torch.abs(images[:, :, 1:, :] - images[:, :, :-1, :]).flatten(1).mean(1)
    horizontal = torch.abs(images[:, :, :, 1:] - images[:, :, :, :-1]).flatten(1).mean(1)
    return 0.5 * (vertical + horizontal)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Return the channel Gram matrix of a batch-1 feature map, divided by channels x pixels."""
    return gram_matrices(features)[0]


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between batch-1 features and their content target."""
    return content_losses(features, target)[0]


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between the Gram matrix of batch-1 features and a target Gram matrix."""
    return style_losses(features, target_gram.unsqueeze(0) if target_gram.dim() == 2 else target_gram)[0]


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Return the anisotropic total variation of a batch-1 image."""
    return tv_losses(image)[0]
