"""Layer similarity metrics and layer clustering (kdforge.hints), checked against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdforge.hints import (
    METRICS, LayerClusters, cca_r2, cka_linear, cka_rbf, cluster_layers, distance_matrix, initial_centres,
    progress_total,
)
from kdforge.hints.similarity import squared_distances


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These matrices are tiny: one thread avoids per-call thread wake-up costs (ms each on some CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- independent references


def direct_cca(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean of the squared canonical correlations: the min(Cx, Cy) largest eigenvalues of
    Sxx^-1 Sxy Syy^-1 Syx (covariances of the centred data)."""
    x, y = x.double().numpy(), y.double().numpy()
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    eig = np.sort(np.linalg.eigvals(m).real)[::-1][: min(x.shape[1], y.shape[1])]
    return float(eig.mean())


def hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h))


def direct_cka(k: np.ndarray, l: np.ndarray) -> float:
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def linear_gram(x: torch.Tensor) -> np.ndarray:
    x = x.double().numpy()
    return x @ x.T


def rbf_gram(x: torch.Tensor, sigma_frac: float = 1.0) -> np.ndarray:
    d = torch.cdist(x.double(), x.double()).numpy()
    off = d[~np.eye(d.shape[0], dtype=bool)]
    sigma = np.median(off)
    if sigma == 0:
        sigma = off[off > 0].mean()
    sigma *= sigma_frac
    return np.exp(-(d**2) / (2 * sigma**2))


def random_orthogonal(c: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
    return q


def features(n: int = 60, cx: int = 5, cy: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated random pair: y partly a linear function of x."""
    x = torch.randn(n, cx, dtype=torch.float64)
    y = x @ torch.randn(cx, cy, dtype=torch.float64) + 2.0 * torch.randn(n, cy, dtype=torch.float64)
    return x, y


# ----------------------------------------------------------------------------- cca_r2


@pytest.mark.parametrize("cx,cy", [(5, 8), (8, 5), (3, 3), (1, 6)])
def test_cca_matches_direct_formula(cx, cy):
    x, y = features(cx=cx, cy=cy)
    expected = direct_cca(x, y)
    assert 0.0 < expected < 1.0
    assert cca_r2(x, y) == pytest.approx(expected, abs=1e-10)
    assert cca_r2(y, x) == pytest.approx(expected, abs=1e-10)


def test_cca_is_one_for_linear_maps_permutations_and_scalings():
    x = torch.randn(50, 6, dtype=torch.float64)
    a = torch.randn(6, 6, dtype=torch.float64) + 3.0 * torch.eye(6, dtype=torch.float64)
    assert cca_r2(x, x @ a) == pytest.approx(1.0, abs=1e-10)
    scaled = x[:, torch.randperm(6)] * torch.tensor([1.0, -2.0, 0.5, 3.0, 7.0, -0.1], dtype=torch.float64)
    assert cca_r2(x, scaled) == pytest.approx(1.0, abs=1e-10)
    assert cca_r2(x, x + 5.0) == pytest.approx(1.0, abs=1e-10)


def test_cca_invariant_to_invertible_maps():
    x, y = features(cx=4, cy=7)
    base = cca_r2(x, y)
    a = torch.randn(4, 4, dtype=torch.float64) + 2.0 * torch.eye(4, dtype=torch.float64)
    b = torch.randn(7, 7, dtype=torch.float64) + 2.0 * torch.eye(7, dtype=torch.float64)
    assert cca_r2(x @ a, y) == pytest.approx(base, abs=1e-10)
    assert cca_r2(x, y @ b - 3.0) == pytest.approx(base, abs=1e-10)


def test_cca_ignores_dead_duplicated_and_constant_channels():
    x, y = features(cx=4, cy=6)
    base = cca_r2(x, y)
    zero = torch.zeros(x.shape[0], 1, dtype=torch.float64)
    assert cca_r2(torch.cat([x, zero], 1), y) == pytest.approx(base, abs=1e-10)
    assert cca_r2(torch.cat([x, x[:, :2]], 1), y) == pytest.approx(base, abs=1e-10)
    assert cca_r2(torch.cat([x, zero + 0.1], 1), y) == pytest.approx(base, abs=1e-10)
    # a plain QR basis of the padded matrix would count the dead channel's arbitrary direction
    assert cca_r2(x, torch.cat([y, zero, zero], 1)) == pytest.approx(base, abs=1e-10)


def test_cca_of_constant_matrix_is_zero():
    x, _ = features()
    const = torch.full((x.shape[0], 3), 0.1, dtype=torch.float64)
    assert cca_r2(const, x) == 0.0
    assert cca_r2(x, const) == 0.0
    assert cca_r2(const, const) == 0.0


def test_cca_accepts_other_dtypes():
    x, y = features()
    assert cca_r2(x.float(), y.float()) == pytest.approx(direct_cca(x.float(), y.float()), abs=1e-8)
    assert isinstance(cca_r2(x.half(), y.bfloat16()), float)


@pytest.mark.parametrize("fn", [cca_r2, cka_linear, cka_rbf])
def test_pairwise_validation(fn):
    x, y = features()
    with pytest.raises(ValueError, match="same number of rows"):
        fn(x, y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        fn(x[:, 0], y)
    with pytest.raises(ValueError, match="N >= 2"):
        fn(x[:1], y[:1])
    bad = y.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="y contains non-finite"):
        fn(x, bad)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        fn(bad, x)


def test_parameter_validation():
    x, y = features()
    with pytest.raises(ValueError, match="rtol"):
        cca_r2(x, y, rtol=-1.0)
    with pytest.raises(ValueError, match="sigma_frac"):
        cka_rbf(x, y, sigma_frac=0.0)


# ----------------------------------------------------------------------------- cka_linear


@pytest.mark.parametrize("cx,cy", [(5, 8), (12, 3)])
def test_cka_linear_matches_hsic(cx, cy):
    x, y = features(n=40, cx=cx, cy=cy)
    expected = direct_cka(linear_gram(x), linear_gram(y))
    assert cka_linear(x, y) == pytest.approx(expected, abs=1e-12)


def test_cka_linear_invariances():
    x, y = features(cx=6, cy=4)
    base = cka_linear(x, y)
    assert cka_linear(x @ random_orthogonal(6), y) == pytest.approx(base, abs=1e-12)
    assert cka_linear(x, y @ random_orthogonal(4)) == pytest.approx(base, abs=1e-12)
    assert cka_linear(3.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-12)
    assert cka_linear(x + 4.0, y - torch.arange(4.0, dtype=torch.float64)) == pytest.approx(base, abs=1e-12)
    # not invariant to a general (non-orthogonal, non-isotropic) linear map
    assert cka_linear(x * torch.arange(1.0, 7.0, dtype=torch.float64), y) != pytest.approx(base, abs=1e-3)


def test_cka_linear_self_and_constant():
    x, _ = features()
    assert cka_linear(x, x) == pytest.approx(1.0, abs=1e-12)
    const = torch.ones(x.shape[0], 2, dtype=torch.float64)
    assert cka_linear(x, const) == 0.0
    assert cka_linear(const, const) == 0.0


# ----------------------------------------------------------------------------- cka_rbf


@pytest.mark.parametrize("n,sigma_frac", [(30, 1.0), (31, 1.0), (40, 0.5), (25, 2.0)])
def test_cka_rbf_matches_explicit_kernels(n, sigma_frac):
    x, y = features(n=n, cx=4, cy=9)
    expected = direct_cka(rbf_gram(x, sigma_frac), rbf_gram(y, sigma_frac))
    assert cka_rbf(x, y, sigma_frac=sigma_frac) == pytest.approx(expected, abs=1e-12)


def test_cka_rbf_invariances():
    x, y = features(n=40, cx=5, cy=3)
    base = cka_rbf(x, y)
    assert cka_rbf(x @ random_orthogonal(5), y) == pytest.approx(base, abs=1e-12)
    assert cka_rbf(x, y @ random_orthogonal(3) + 7.0) == pytest.approx(base, abs=1e-12)
    assert cka_rbf(10.0 * x, 0.3 * y) == pytest.approx(base, abs=1e-12)
    assert cka_rbf(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,same", [(10, 8), (9, 7)])
def test_cka_rbf_zero_median_falls_back_to_mean_of_nonzero_distances(n, same):
    x, y = features(n=n, cx=3, cy=3)
    x[:same] = x[0]  # 28 of 45 (21 of 36) pairs are at distance 0: the median is 0
    expected = direct_cka(rbf_gram(x), rbf_gram(y))
    assert cka_rbf(x, y) == pytest.approx(expected, abs=1e-12)


def test_squared_distances_are_exact_for_identical_and_near_identical_rows():
    # large offsets: the Gram trick |a|^2 + |b|^2 - 2ab loses every digit of these distances, and on
    # some BLAS builds gives identical rows a tiny non-zero distance (then a zero median goes unseen)
    x = torch.randn(12, 5, dtype=torch.float64) * 1e3 + 5e3
    x[1:6] = x[0]
    x[7] = x[6] * (1 + 1e-9)
    x[8] = x[6] * (1 - 3e-9)
    direct = (x[:, None, :] - x[None, :, :]).square().sum(-1)
    d2 = squared_distances(x)
    assert bool((d2[:6, :6] == 0).all())  # exactly, whatever the BLAS rounds
    assert bool((d2.diagonal() == 0).all())
    assert d2[6, 7] > 0 and d2[6, 8] > 0
    torch.testing.assert_close(d2, direct, rtol=1e-9, atol=0.0)


def test_cka_rbf_median_with_tied_middle_values():
    # cube corners: 12 distances 1, 12 sqrt(2), 4 sqrt(3); both middle values (14th, 15th) are sqrt(2)
    x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)
    y = torch.randn(8, 2, dtype=torch.float64)
    expected = direct_cka(rbf_gram(x), rbf_gram(y))
    assert cka_rbf(x, y) == pytest.approx(expected, abs=1e-12)


def test_cka_rbf_of_constant_matrix_is_zero():
    x, _ = features()
    const = torch.full((x.shape[0], 4), 0.3, dtype=torch.float64)
    assert cka_rbf(x, const) == 0.0
    assert cka_rbf(const, const) == 0.0


# ----------------------------------------------------------------------------- distance_matrix

PAIRWISE = {"cca": cca_r2, "cka_linear": cka_linear, "cka_rbf": cka_rbf}


def layer_stack(n: int = 40) -> list[torch.Tensor]:
    base = torch.randn(n, 6)
    return [
        base,
        base @ torch.randn(6, 10) + 0.5 * torch.randn(n, 10),
        torch.relu(base[:, :3] @ torch.randn(3, 7)),   # rank 3, dead channels possible
        torch.randn(n, 4),
        torch.cat([base[:, :2], torch.zeros(n, 2)], 1),  # dead channels
        torch.full((n, 3), 0.25),                     # constant layer
    ]


def direct_distances(layers, metric: str) -> np.ndarray:
    count = len(layers)
    d = np.zeros((count, count))
    for i in range(count):
        for j in range(count):
            if i != j:
                d[i, j] = max(1.0 - PAIRWISE[metric](layers[i], layers[j]), 0.0)
    return d


def min_max(d: np.ndarray) -> np.ndarray:
    off = ~np.eye(d.shape[0], dtype=bool)
    low, high = d[off].min(), d[off].max()
    out = np.zeros_like(d) if high == low else (d - low) / (high - low)
    out[~off] = 0.0
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_distance_matrix_matches_pairwise(metric):
    layers = layer_stack()
    d = distance_matrix(layers, metric)
    assert d.dtype == torch.float64 and d.shape == (6, 6)
    assert torch.equal(d, d.T)
    assert torch.equal(d.diagonal(), torch.zeros(6, dtype=torch.float64))
    assert bool((d >= 0).all())
    tol = 1e-6 if metric == "cka_rbf" else 1e-10  # rbf kernels are stored in float32
    np.testing.assert_allclose(d.numpy(), direct_distances(layers, metric), atol=tol, rtol=0)
    assert torch.equal(d[5, :5], torch.ones(5, dtype=torch.float64))  # constant layer


def test_distance_matrix_rbf_uses_first_samples():
    layers = layer_stack(n=50)
    d = distance_matrix(layers[:4], "cka_rbf", rbf_samples=30)
    expected = direct_distances([x[:30] for x in layers[:4]], "cka_rbf")
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-6, rtol=0)
    full = direct_distances(layers[:4], "cka_rbf")
    assert not np.allclose(d.numpy(), full, atol=1e-3)


def test_distance_matrix_combined_is_mean_of_min_max():
    layers = layer_stack()
    d = distance_matrix(layers, "combined")
    expected = np.mean([min_max(direct_distances(layers, m)) for m in METRICS], axis=0)
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-5, rtol=0)
    assert torch.equal(d, d.T) and float(d.max()) <= 1.0 + 1e-12
    two = distance_matrix(layers, "combined", combine=("cca", "cka_linear"))
    expected = np.mean([min_max(direct_distances(layers, m)) for m in ("cca", "cka_linear")], axis=0)
    np.testing.assert_allclose(two.numpy(), expected, atol=1e-10, rtol=0)
    one = distance_matrix(layers, "combined", combine=["cka_linear"])
    np.testing.assert_allclose(one.numpy(), min_max(direct_distances(layers, "cka_linear")), atol=1e-10, rtol=0)


def test_distance_matrix_min_max_of_equal_distances_is_zero():
    const = torch.zeros(20, 2)
    const[:, 0] = 1.0
    layers = [const, const + 1.0, torch.full((20, 2), 3.0)]  # all constant: every distance is 1
    d = distance_matrix(layers, "combined")
    assert torch.equal(d, torch.zeros(3, 3, dtype=torch.float64))


def test_distance_matrix_identical_layers_and_single_layer():
    x = torch.randn(30, 5, dtype=torch.float64) + 3.0  # offsets: CCA is of the centred layers
    layers = [x, x.clone(), x @ torch.randn(5, 5, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64) - 2.0]
    d = distance_matrix(layers, "cca")
    # 1 - CCA, written out with numpy; a copy of x and an invertible linear map of it span x's space: 0 apart
    expected = np.array([[0.0 if i == j else 1.0 - direct_cca(a, b) for j, b in enumerate(layers)]
                         for i, a in enumerate(layers)])
    assert expected[0, 3] > 0.5  # the unrelated layer is far: the comparison is not only of zeros
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-9, rtol=0)  # solve() of a random map: ~1e-11
    assert torch.equal(d.diagonal(), torch.zeros(4, dtype=torch.float64)) and torch.equal(d, d.T)
    assert float(d[:3, :3].abs().max()) <= 1e-12
    assert torch.equal(distance_matrix([x], "cka_linear"), torch.zeros(1, 1, dtype=torch.float64))


def test_distance_matrix_progress_counts():
    layers = layer_stack()
    seen: list[int] = []
    distance_matrix(layers, "combined", progress=seen.append)
    assert all(n > 0 for n in seen)
    assert sum(seen) == progress_total(len(layers), "combined") == 3 * (6 + 15)
    seen.clear()
    distance_matrix(layers, "cca", progress=seen.append)
    assert sum(seen) == progress_total(len(layers), "cca") == 6 + 15


def test_distance_matrix_validation():
    layers = layer_stack()
    with pytest.raises(ValueError, match="metric must be one of cca, cka_linear, cka_rbf, combined"):
        distance_matrix(layers, "cka")
    with pytest.raises(ValueError, match="combine entries"):
        distance_matrix(layers, "combined", combine=("cca", "svcca"))
    with pytest.raises(ValueError, match="combine"):
        distance_matrix(layers, "combined", combine=())
    with pytest.raises(ValueError, match="combine"):
        distance_matrix(layers, "combined", combine="cca")
    with pytest.raises(ValueError, match=r"features\[2\] has N = 39"):
        distance_matrix(layers[:2] + [layers[2][:-1]], "cca")
    with pytest.raises(ValueError, match=r"features\[1\] must be a 2-D"):
        distance_matrix([layers[0], layers[1][None]], "cca")
    with pytest.raises(ValueError, match="features must be a non-empty"):
        distance_matrix([], "cca")
    with pytest.raises(ValueError, match="rbf_samples"):
        distance_matrix(layers, "cka_rbf", rbf_samples=1)


# ----------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("num_layers,k,expected", [
    (54, 3, [0, 26, 53]),          # 53/2 = 26.5
    (54, 4, [0, 17, 35, 53]),      # 53/3 = 17.67 -> 17, 35.33 -> 35
    (10, 4, [0, 3, 6, 9]),
    (7, 3, [0, 3, 6]),
    (5, 5, [0, 1, 2, 3, 4]),
    (8, 1, [0]),
    (1, 1, [0]),
])
def test_initial_centres(num_layers, k, expected):
    assert initial_centres(num_layers, k) == expected


def test_initial_centres_validation():
    with pytest.raises(ValueError, match="k must be"):
        initial_centres(5, 6)
    with pytest.raises(ValueError, match="k must be"):
        initial_centres(5, 0)
    with pytest.raises(ValueError, match="num_layers"):
        initial_centres(0, 1)


def block_distances(sizes: list[int]) -> torch.Tensor:
    """Random symmetric distances: < 0.1 within a group, > 0.8 between groups, 0 on the diagonal."""
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    same = group[:, None] == group[None, :]
    noise = torch.rand(len(group), len(group), dtype=torch.float64)
    d = torch.where(same, 0.1 * noise, 0.8 + 0.2 * noise)
    d = (d + d.T) / 2
    return d.fill_diagonal_(0.0)


def test_cluster_layers_recovers_blocks():
    # groups {0,1,2} {3..6} {7,8} {9..13}; initial centres [0, 4, 8, 13] lie one per group.
    # member nearest the mean index: 1; 4.5 -> tie 4/5 -> 4; 7.5 -> tie 7/8 -> 7; 11
    result = cluster_layers(block_distances([3, 4, 2, 5]), 4)
    assert result.centres == (1, 4, 7, 11)
    assert result.assignment == (0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3)
    assert result.converged and result.iterations == 2
    assert [result.members(c) for c in range(4)] == [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13]]


def test_cluster_layers_blocks_from_distance_matrix():
    # layers 0-2 share one latent, 3-7 another, 8-9 a third; widths differ within groups
    n = 200
    latents = [torch.randn(n, 4) for _ in range(3)]
    widths = [3, 5, 8, 4, 6, 6, 9, 5, 7, 3]
    groups = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    layers = [latents[g] @ torch.randn(4, w) + 0.05 * torch.randn(n, w) for g, w in zip(groups, widths)]
    result = cluster_layers(distance_matrix(layers, "cka_linear"), 3)  # initial centres [0, 4, 9]
    assert result.assignment == tuple(groups)
    assert result.centres == (1, 5, 8)  # means 1, 5, 8.5 -> tie 8/9 -> 8


# Layers on a line at positions P, distance |P_i - P_j|; L = 7, K = 2, initial centres [0, 6].
# round 1: centres 0 (p 0), 6 (p 28): layer 4 (p 12) 12 vs 16 -> first; layer 5 (p 15) 15 vs 13 -> second.
#          {0..4} mean 2 -> 2; {5, 6} mean 5.5 -> tie -> 5.                              centres [2, 5]
# round 2: centres 2 (p 9), 5 (p 15): layer 4 (p 12) 3 vs 3 -> tie, index gap 2 vs 1 -> 5.
#          {0..3} mean 1.5 -> tie -> 1; {4, 5, 6} mean 5 -> 5.                            centres [1, 5]
# round 3: centres 1 (p 3), 5 (p 15): layer 2 (p 9) 6 vs 6 -> tie, gap 1 vs 3 -> 1; layer 3 (p 10) 7 vs 5 -> 5.
#          {0, 1, 2} mean 1 -> 1; {3..6} mean 4.5 -> tie -> 4.                             centres [1, 4]
# round 4: centres 1 (p 3), 4 (p 12): layer 2 (p 9) 6 vs 3 -> 4.
#          {0, 1} mean 0.5 -> tie -> 0; {2..6} mean 4 -> 4.                                centres [0, 4]
# round 5: centres 0 (p 0), 4 (p 12): layer 1 (p 3) 3 vs 9, layer 2 (p 9) 9 vs 3: same clusters,
#          centres [0, 4] unchanged -> converged after 5 rounds.
LINE = [0.0, 3.0, 9.0, 10.0, 12.0, 15.0, 28.0]


def line_distances(positions: list[float]) -> torch.Tensor:
    p = torch.tensor(positions, dtype=torch.float64)
    return (p[:, None] - p[None, :]).abs()


def test_cluster_layers_hand_worked_moves():
    result = cluster_layers(line_distances(LINE), 2)
    assert result == LayerClusters(centres=(0, 4), assignment=(0, 0, 1, 1, 1, 1, 1), iterations=5, converged=True)


def test_cluster_layers_iteration_cap():
    result = cluster_layers(line_distances(LINE), 2, max_iter=3)
    # after round 3 the centres are [1, 4]; the assignment is the one for those centres (round 4's)
    assert result == LayerClusters(centres=(1, 4), assignment=(0, 0, 1, 1, 1, 1, 1), iterations=3, converged=False)
    assert cluster_layers(line_distances(LINE), 2, max_iter=5).converged


def test_cluster_layers_tie_breaking():
    # all distances 0: every layer ties on distance; nearest centre by index wins, then the lower one.
    # centres [0, 2, 4]: layer 1 -> 0 (gap 1 vs 1, lower), layer 3 -> 2 (gap 1 vs 1, lower);
    # means 0.5 -> 0, 2.5 -> 2, 4 -> 4: stable in one round, each centre keeps itself.
    result = cluster_layers(torch.zeros(5, 5), 3)
    assert result == LayerClusters(centres=(0, 2, 4), assignment=(0, 0, 1, 1, 2), iterations=1, converged=True)
    # centres [0, 3]; layer 2 is at distance 1 from both: it goes to the nearer index (3), so the
    # clusters are {0, 1} (mean 0.5 -> 0) and {2, 3} (mean 2.5 -> 2). Had it gone to 0, the
    # centres would have become [1, 3].
    d = torch.full((4, 4), 5.0).fill_diagonal_(0.0)
    d[2, 0] = d[2, 3] = 1.0
    d[1, 0] = 1.0
    assert cluster_layers(d, 2, max_iter=1).centres == (0, 2)


def test_cluster_layers_k_one_and_k_all():
    d = block_distances([2, 3, 1])
    one = cluster_layers(d, 1)
    # round 1 moves centre 0 to the member nearest the mean index 2.5 (tie -> 2); round 2 keeps it
    assert one == LayerClusters(centres=(2,), assignment=(0,) * 6, iterations=2, converged=True)
    every = cluster_layers(d, 6)
    assert every == LayerClusters(centres=tuple(range(6)), assignment=tuple(range(6)), iterations=1, converged=True)


def test_cluster_layers_is_deterministic():
    x = torch.rand(12, 12, dtype=torch.float64)
    d = ((x + x.T) / 2).fill_diagonal_(0.0)
    assert cluster_layers(d, 4) == cluster_layers(d.clone(), 4)
    assert cluster_layers(d.float(), 4) == cluster_layers(d, 4)


def test_cluster_layers_validation():
    d = line_distances(LINE)
    with pytest.raises(ValueError, match="square"):
        cluster_layers(d[:, :5], 2)
    with pytest.raises(ValueError, match="square"):
        cluster_layers(d[0], 2)
    bad = d.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        cluster_layers(bad, 2)
    with pytest.raises(ValueError, match="k must be"):
        cluster_layers(d, 0)
    with pytest.raises(ValueError, match="k must be"):
        cluster_layers(d, 8)
    with pytest.raises(ValueError, match="max_iter"):
        cluster_layers(d, 2, max_iter=0)
    with pytest.raises(ValueError, match="cluster must be"):
        cluster_layers(d, 2).members(2)


def test_cluster_layers_empty_cluster_raises():
    # every layer is nearer centre 2 than centre 0, even layer 0 itself: cluster 0 is empty
    d = torch.zeros(3, 3)
    d[:, 0] = 5.0
    with pytest.raises(RuntimeError, match="empty"):
        cluster_layers(d, 2)
