"""Representation similarity between layers, for choosing hint layers.

Each layer gives a matrix X of shape (N, C): N probe inputs, C channels (after
global average pooling). Three similarities are provided, all in [0, 1]:

* ``cca``: mean squared canonical correlation, R2_CCA (Hotelling, 1936; as used
  by Kornblith et al., "Similarity of Neural Network Representations
  Revisited", ICML 2019, arXiv 1905.00414).
* ``cka_linear`` / ``cka_rbf``: centred kernel alignment with a linear or
  Gaussian kernel (Kornblith et al., 2019; HSIC from Gretton et al., 2005).

``distance_matrix`` turns them into the (L, L) layer distances that PURSUhInT
(Keser et al., arXiv 2103.00053) clusters. All arithmetic is float64 on the CPU.

Degenerate inputs: a layer that is constant over the N inputs (zero after
centring) has similarity 0 with every layer, itself included; its distances are
1 (``distance_matrix`` still puts 0 on the diagonal). Columns that are exactly
constant are zeroed exactly when centring, so rounding in the mean cannot turn
them into spurious signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

METRICS = ("cca", "cka_linear", "cka_rbf")
COMBINED = "combined"
RANK_RTOL = 1e-6  # singular values <= RANK_RTOL * the largest count as zero (CCA basis)
GRAM_RTOL = 1e-9  # squared distances the Gram trick gives below this share of the squared norms are recomputed

Progress = Callable[[int], None] | None


# ----------------------------------------------------------------------------- validation


def _check_matrix(x: Tensor, name: str) -> Tensor:
    """`x` as a tensor after checking it is a finite, real 2-D (N >= 2, C >= 1) matrix."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, C) tensor, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs N >= 2 rows (inputs), got N = {t.shape[0]}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} needs at least one column (channel), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return t


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Both matrices checked, with the same number of rows, as float64 on the CPU."""
    x, y = _check_matrix(x, "x"), _check_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows N, got {x.shape[0]} and {y.shape[0]}")
    return _float64(x), _float64(y)


def _check_features(features: Sequence[Tensor]) -> list[Tensor]:
    """The layer matrices checked (2-D, finite, one common N), left in their dtype and device."""
    if isinstance(features, Tensor) or len(features) == 0:
        raise ValueError("features must be a non-empty sequence of (N, C_l) tensors, one per layer")
    mats = [_check_matrix(f, f"features[{i}]") for i, f in enumerate(features)]
    n = mats[0].shape[0]
    for i, m in enumerate(mats):
        if m.shape[0] != n:
            raise ValueError(f"features[{i}] has N = {m.shape[0]} rows but features[0] has N = {n}; "
                             "every layer must be computed on the same inputs")
    return mats


def _check_metric(metric: str, combine: Sequence[str]) -> tuple[str, ...]:
    """The metrics to compute: (metric,) or the validated `combine` list for "combined"."""
    allowed = METRICS + (COMBINED,)
    if metric not in allowed:
        raise ValueError(f"metric must be one of {', '.join(allowed)}; got {metric!r}")
    if metric != COMBINED:
        return (metric,)
    if isinstance(combine, str) or len(combine) == 0:
        raise ValueError(f"combine must be a non-empty sequence of metric names from {METRICS}, got {combine!r}")
    for name in combine:
        if name not in METRICS:
            raise ValueError(f"combine entries must be among {', '.join(METRICS)}; got {name!r}")
    if len(set(combine)) != len(combine):
        raise ValueError(f"combine must not repeat a metric, got {tuple(combine)}")
    return tuple(combine)


def _float64(x: Tensor) -> Tensor:
    return x.detach().to(device="cpu", dtype=torch.float64)


# ----------------------------------------------------------------------------- per-layer quantities


def _centre(x: Tensor) -> Tensor:
    """Column-centred float64 copy of `x`; exactly constant columns become exact zeros."""
    constant = x.amax(0) == x.amin(0)
    xc = x - x.mean(0, keepdim=True)
    xc[:, constant] = 0.0
    return xc


def _basis(xc: Tensor, rtol: float) -> Tensor:
    """Orthonormal basis (N, r) of the column space of centred `xc`: left singular vectors with
    singular value > rtol * largest. r = 0 for a zero matrix."""
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0]
    rank = int((s > rtol * s[0]).sum())
    return u[:, :rank]


def _upper_index(n: int, offset: int) -> Tensor:
    """Flat (row-major) indices of the upper triangle of an (n, n) matrix, from diagonal `offset`
    (0: with the diagonal, 1: strictly above it)."""
    return torch.ones(n, n, dtype=torch.bool).triu_(offset).view(-1).nonzero().squeeze(1)


def _median_sqrt(values: Tensor) -> float:
    """Median of sqrt(values) for non-negative 1-D `values` (mean of the two middle values for
    an even count); sqrt is monotone, so order statistics are taken before it. Overwrites
    `values` when the two middle values differ."""
    m = values.numel()
    lo = torch.kthvalue(values, (m + 1) // 2).values
    hi = lo
    if m % 2 == 0:
        below = values <= lo
        if int(below.sum()) < m // 2 + 1:
            hi = values.masked_fill_(below, torch.inf).min()
    return (math.sqrt(float(lo)) + math.sqrt(float(hi))) / 2.0


def _rbf_bandwidth(sq_dists: Tensor, strict_upper: Tensor, sigma_frac: float) -> float:
    """sigma_frac * median pairwise distance (mean of the nonzero distances if the median is 0);
    0.0 when every distance is 0. `strict_upper` from ``_upper_index(n, 1)``."""
    values = sq_dists.view(-1).index_select(0, strict_upper)
    scale = _median_sqrt(values)  # overwrites `values` only when the median is > 0
    if scale == 0.0:
        nonzero = values[values > 0]
        scale = float(nonzero.sqrt_().mean()) if nonzero.numel() else 0.0
    return sigma_frac * scale


def squared_distances(x: Tensor) -> Tensor:
    """(N, N) squared Euclidean distances between the rows of float64 `x`, the same on any BLAS.

    The Gram trick |a|^2 + |b|^2 - 2 a.b is fast but rounds: identical rows may come out at a tiny
    non-zero distance, and rows closer than its rounding error cannot be told apart. So identical
    rows get exactly 0, and every other pair the trick cannot resolve (at most GRAM_RTOL of the
    squared norms) is recomputed from the differences of the rows."""
    sq = x.square().sum(1)
    d2 = x @ x.T
    d2.mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_min_(0.0)
    _, group = torch.unique(x, dim=0, return_inverse=True)
    same = group[:, None] == group[None, :]
    unresolved = (d2 <= GRAM_RTOL * (sq[:, None] + sq[None, :])) & ~same
    rows, cols = unresolved.nonzero(as_tuple=True)
    for start in range(0, rows.numel(), 1 << 14):  # chunks bound the memory of the differences
        i, j = rows[start:start + (1 << 14)], cols[start:start + (1 << 14)]
        d2[i, j] = (x[i] - x[j]).square().sum(1)
    return d2.masked_fill_(same, 0.0)


def _rbf_centred_kernel(x: Tensor, sigma_frac: float, strict_upper: Tensor) -> Tensor | None:
    """H K H for the Gaussian kernel exp(-d^2 / (2 sigma^2)) of the rows of float64 `x`, with the
    median bandwidth; None when the kernel is constant (all rows equal)."""
    d2 = squared_distances(_centre(x))  # translation does not change distances; centring limits cancellation
    sigma = _rbf_bandwidth(d2, strict_upper, sigma_frac)
    if sigma == 0.0:
        return None
    kernel = d2.div_(-2.0 * sigma * sigma).exp_()
    row, col, total = kernel.mean(1, keepdim=True), kernel.mean(0, keepdim=True), kernel.mean()
    return kernel.sub_(row).sub_(col).add_(total)


def _check_sigma_frac(sigma_frac: float) -> None:
    if not (math.isfinite(sigma_frac) and sigma_frac > 0):
        raise ValueError(f"sigma_frac must be a finite number > 0, got {sigma_frac}")


# ----------------------------------------------------------------------------- pairwise similarities


def cca_r2(x: Tensor, y: Tensor, rtol: float = RANK_RTOL) -> float:
    """Mean squared canonical correlation R2_CCA = ||Q_x^T Q_y||_F^2 / min(r_x, r_y).

    Q is an orthonormal basis of the column space of the column-centred matrix and r its
    numerical rank (singular values > rtol * the largest). Rank-deficient inputs (dead or
    duplicated channels) therefore do not inflate the value; for full-rank inputs the basis
    spans the same space as the QR basis of the spec, so the value is the same. A constant
    (rank-0) matrix has similarity 0. Meaningful when r_x + r_y << N. (Kornblith et al., 2019.)
    """
    if not (math.isfinite(rtol) and 0.0 <= rtol < 1.0):
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    x, y = _check_pair(x, y)
    qx, qy = _basis(_centre(x), rtol), _basis(_centre(y), rtol)
    rank = min(qx.shape[1], qy.shape[1])
    if rank == 0:
        return 0.0
    return float((qx.T @ qy).square().sum()) / rank


def cka_linear(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al., ICML 2019), computed in feature space:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F). 0 if either matrix is constant."""
    x, y = _check_pair(x, y)
    xc, yc = _centre(x), _centre(y)
    norm = float(torch.linalg.matrix_norm(xc.T @ xc)) * float(torch.linalg.matrix_norm(yc.T @ yc))
    if norm == 0.0:
        return 0.0
    return float((yc.T @ xc).square().sum()) / norm


def cka_rbf(x: Tensor, y: Tensor, sigma_frac: float = 1.0) -> float:
    """RBF-kernel CKA (Kornblith et al., ICML 2019) with HSIC(K, L) = tr(K H L H),
    H = I - 11^T/n (Gretton et al., 2005).

    Kernel exp(-d^2 / (2 sigma^2)) with sigma = sigma_frac * the median of the off-diagonal
    pairwise Euclidean distances of each matrix (the mean of the nonzero distances if that
    median is 0). 0 if either matrix is constant. Builds N x N kernels: O(N^2) memory.
    """
    _check_sigma_frac(sigma_frac)
    x, y = _check_pair(x, y)
    strict_upper = _upper_index(x.shape[0], 1)
    kx = _rbf_centred_kernel(x, sigma_frac, strict_upper)
    ky = _rbf_centred_kernel(y, sigma_frac, strict_upper)
    if kx is None or ky is None:
        return 0.0
    norm = float(torch.linalg.matrix_norm(kx)) * float(torch.linalg.matrix_norm(ky))
    return float((kx * ky).sum()) / norm if norm > 0.0 else 0.0


# ----------------------------------------------------------------------------- all layer pairs


def _report(progress: Progress, n: int) -> None:
    if progress is not None and n > 0:
        progress(n)


def _stacked(mats: list[Tensor], transform: Callable[[Tensor], Tensor], progress: Progress
             ) -> tuple[Tensor, list[int]]:
    """transform(float64 layer) side by side in one (N, sum of widths) matrix, and the widths."""
    out = torch.empty(mats[0].shape[0], sum(m.shape[1] for m in mats), dtype=torch.float64)
    widths, offset = [], 0
    for m in mats:
        block = transform(_float64(m))
        out[:, offset:offset + block.shape[1]] = block
        widths.append(block.shape[1])
        offset += block.shape[1]
        _report(progress, 1)
    return out[:, :offset], widths


def _cross_norms(stacked: Tensor, widths: list[int], progress: Progress) -> Tensor:
    """S[i, j] = ||A_i^T A_j||_F^2 for the column blocks A_i of `stacked`, on and above the
    diagonal (zeros below): one matmul per layer against all later layers."""
    count = len(widths)
    starts = [0]
    for w in widths:
        starts.append(starts[-1] + w)
    owner = torch.repeat_interleave(torch.arange(count), torch.tensor(widths, dtype=torch.long))
    result = torch.zeros(count, count, dtype=torch.float64)
    for i in range(count):
        rest = stacked[:, starts[i]:]
        column_sq = (stacked[:, starts[i]:starts[i + 1]].T @ rest).square_().sum(0)
        result[i].index_add_(0, owner[starts[i]:], column_sq)
        _report(progress, count - 1 - i)
    return result


def _cca_similarities(mats: list[Tensor], progress: Progress) -> Tensor:
    stacked, ranks = _stacked(mats, lambda x: _basis(_centre(x), RANK_RTOL), progress)
    cross = _cross_norms(stacked, ranks, progress)
    r = torch.tensor(ranks, dtype=torch.float64)
    smaller = torch.minimum(r[:, None], r[None, :])
    return torch.where(smaller > 0, cross / smaller.clamp_min(1.0), torch.zeros_like(cross))


def _normalised_gram(gram: Tensor) -> Tensor:
    """G[i, j] / sqrt(G[i, i] G[j, j]), with 0 where a diagonal entry is 0."""
    scale = gram.diagonal().clamp_min(0.0).sqrt()
    denom = scale[:, None] * scale[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(gram))


def _cka_linear_similarities(mats: list[Tensor], progress: Progress) -> Tensor:
    stacked, widths = _stacked(mats, _centre, progress)
    return _normalised_gram(_cross_norms(stacked, widths, progress))


def _cka_rbf_similarities(mats: list[Tensor], samples: int, progress: Progress) -> Tensor:
    """RBF CKA on the first `samples` rows. Each layer's centred kernel is stored once as its
    upper triangle (off-diagonal entries scaled by sqrt 2, so that dot products of these rows
    are Frobenius products of the kernels) in float32; the Gram of the rows is accumulated in
    float64 in column chunks."""
    m = min(samples, mats[0].shape[0])
    upper, strict_upper = _upper_index(m, 0), _upper_index(m, 1)
    packed = torch.zeros(len(mats), upper.numel(), dtype=torch.float32)
    for i, x in enumerate(mats):
        kernel = _rbf_centred_kernel(_float64(x[:m]), 1.0, strict_upper)
        if kernel is not None:
            kernel.mul_(math.sqrt(2.0)).diagonal().div_(math.sqrt(2.0))
            packed[i] = kernel.view(-1).index_select(0, upper)
        del kernel
        _report(progress, 1)
    gram = torch.zeros(len(mats), len(mats), dtype=torch.float64)
    chunk = 1 << 16
    for start in range(0, packed.shape[1], chunk):
        part = packed[:, start:start + chunk].double()
        gram += part @ part.T
    _report(progress, len(mats) * (len(mats) - 1) // 2)
    return _normalised_gram(gram)


def _similarities(mats: list[Tensor], metric: str, rbf_samples: int, progress: Progress) -> Tensor:
    if metric == "cca":
        return _cca_similarities(mats, progress)
    if metric == "cka_linear":
        return _cka_linear_similarities(mats, progress)
    return _cka_rbf_similarities(mats, rbf_samples, progress)


def _to_distances(similarity: Tensor) -> Tensor:
    """1 - similarity from the upper triangle, mirrored exactly, clamped >= 0, zero diagonal."""
    upper = (1.0 - similarity).clamp_min_(0.0).triu_(1)
    return upper + upper.T


def _min_max(distances: Tensor) -> Tensor:
    """(d - min) / (max - min) over the off-diagonal entries (zeros if max == min), zero diagonal."""
    off = ~torch.eye(distances.shape[0], dtype=torch.bool)
    if not bool(off.any()):
        return torch.zeros_like(distances)
    low, high = distances[off].min(), distances[off].max()
    if high == low:
        return torch.zeros_like(distances)
    return ((distances - low) / (high - low)).masked_fill_(~off, 0.0)


def progress_total(num_layers: int, metric: str = "cca", combine: Sequence[str] = METRICS) -> int:
    """Sum of the counts ``distance_matrix`` passes to `progress`: per metric computed,
    L layers + L (L - 1) / 2 pairs (e.g. the ``total`` of a tqdm bar)."""
    count = len(_check_metric(metric, combine))
    return count * (num_layers + num_layers * (num_layers - 1) // 2)


def distance_matrix(features: Sequence[Tensor], metric: str = "cca", *, combine: Sequence[str] = METRICS,
                    rbf_samples: int = 2000, progress: Callable[[int], None] | None = None) -> Tensor:
    """(L, L) float64 distances between layers: 1 - similarity.

    `metric` is one of METRICS or "combined": the mean of the min-max-normalised (over the
    off-diagonal entries) distance matrices of the metrics in `combine`. Zero diagonal, exactly
    symmetric, values >= 0. Per-layer quantities (CCA basis; centred X and ||X^T X||_F; centred
    RBF kernel) are computed once, then all pairs. ``cka_rbf`` uses only the first
    `rbf_samples` rows of every layer (an N x N kernel per layer is too big for large N), so it
    equals ``cka_rbf`` on ``x[:rbf_samples]``; its kernels are stored in float32, so expect
    agreement with ``cka_rbf`` to about 1e-7. `progress(n)` is called with the number of layers
    or pairs just finished (an increment, e.g. ``tqdm.update``; see ``progress_total``).
    """
    metrics = _check_metric(metric, combine)
    if isinstance(rbf_samples, bool) or not isinstance(rbf_samples, int) or rbf_samples < 2:
        raise ValueError(f"rbf_samples must be an integer >= 2, got {rbf_samples!r}")
    mats = _check_features(features)
    parts = [_to_distances(_similarities(mats, name, rbf_samples, progress)) for name in metrics]
    if metric != COMBINED:
        return parts[0]
    return torch.stack([_min_max(d) for d in parts]).mean(0)
