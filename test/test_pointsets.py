"""Tests of pose_core.pointsets: nearest distances and chamfer against brute-force twins (values and gradients,
every search path), F-score against hand-computed values, shifts and identical sets as controls, errors."""

from __future__ import annotations

import math

import pytest
import torch

import pose_core.pointsets as ps
from pose_core.pointsets import SCORE_TAUS, chamfer_distance, f_score, nearest_distances, shape_scores

# relative / absolute tolerance against a float64 twin (float32 inputs keep float32 round-off)
CLOSE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


def _random(shape, dtype, seed) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype) - 0.5


def _pairwise_twin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full ``(B, N, M)`` matrix of squared distances from the differences, in float64 (no matrix product)."""
    return ((a.double()[:, :, None, :] - b.double()[:, None, :, :]) ** 2).sum(-1)


def _chamfer_twin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = _pairwise_twin(a, b)
    return d2.min(dim=2).values.mean(dim=1) + d2.min(dim=1).values.mean(dim=1)


def _loop_twin(a: torch.Tensor, b: torch.Tensor) -> tuple[list[float], float]:
    """Nearest distances from ``a`` ``(N, 3)`` to ``b`` ``(M, 3)`` and the chamfer distance by explicit loops."""
    A, B = a.double().tolist(), b.double().tolist()

    def near2(p, qs):
        return min(sum((p[k] - q[k]) ** 2 for k in range(3)) for q in qs)

    ab = [near2(p, B) for p in A]
    ba = [near2(q, A) for q in B]
    return [math.sqrt(x) for x in ab], sum(ab) / len(ab) + sum(ba) / len(ba)


def test_single_sets_against_double_loop(dtype):
    a, b = _random((7, 3), dtype, 0), _random((11, 3), dtype, 1)  # N != M
    near, chamfer = _loop_twin(a, b)
    d = nearest_distances(a, b)
    c = chamfer_distance(a, b)
    assert d.shape == (7,) and d.dtype == dtype and c.shape == () and c.dtype == dtype
    torch.testing.assert_close(d, torch.tensor(near, dtype=dtype), **CLOSE[dtype])
    torch.testing.assert_close(c, torch.tensor(chamfer, dtype=dtype), **CLOSE[dtype])
    torch.testing.assert_close(nearest_distances(a, b, squared=True), torch.tensor(near, dtype=dtype) ** 2,
                               **CLOSE[dtype])
    # symmetric; the other direction's nearest distances are the other set's
    torch.testing.assert_close(chamfer_distance(b, a), c, **CLOSE[dtype])
    assert nearest_distances(b, a).shape == (11,)


def test_batched_against_pairwise_matrix(dtype):
    a, b = _random((3, 40, 3), dtype, 2), _random((3, 25, 3), dtype, 3)
    d2 = _pairwise_twin(a, b)
    near = nearest_distances(a, b)
    assert near.shape == (3, 40) and near.dtype == dtype
    torch.testing.assert_close(near, d2.min(dim=2).values.sqrt().to(dtype), **CLOSE[dtype])
    c = chamfer_distance(a, b)
    assert c.shape == (3,) and c.dtype == dtype
    torch.testing.assert_close(c, _chamfer_twin(a, b).to(dtype), **CLOSE[dtype])
    # each batch item is its own pair: the same as the single sets
    for i in range(3):
        torch.testing.assert_close(chamfer_distance(a[i], b[i]), c[i], rtol=0, atol=0)
    # a single set against a batch of one keeps the batch axis
    assert chamfer_distance(a[0], b[:1]).shape == (1,)
    # negative controls: unsquared distances are not what the twin computes, and neither is a one-way chamfer
    # (b a subset of a: b -> a is 0, a -> b is not; the chamfer is the one-way mean once, not twice)
    unsquared = d2.min(dim=2).values.sqrt().mean(1) + d2.min(dim=1).values.sqrt().mean(1)
    assert ((unsquared.to(dtype) - c).abs() > 1e-2).all()
    sub = a[:, :5]
    one_way = _pairwise_twin(a, sub).min(dim=2).values.mean(dim=1)
    torch.testing.assert_close(chamfer_distance(a, sub), one_way.to(dtype), **CLOSE[dtype])
    assert (chamfer_distance(sub, a) == chamfer_distance(a, sub)).all() and (one_way > 1e-2).all()


@pytest.mark.parametrize("path", ["kdtree", "chunked"])
def test_every_search_path_against_twin(path, dtype, monkeypatch):
    """The k-d tree (large CPU sets) and the row-chunked matrix product give the twin's values."""
    if path == "kdtree":
        n, m = 700, 400  # N * M = 280,000 >= 2**18 pairs: the k-d tree
        assert n * m >= ps._KDTREE_PAIRS
    else:
        n, m = 300, 200
        monkeypatch.setattr(ps, "_CHUNK_ELEMENTS", 2 * 7 * m)  # 7 rows per chunk: 43 chunks, the last one short
    a, b = _random((2, n, 3), dtype, 4), _random((2, m, 3), dtype, 5)
    d2 = _pairwise_twin(a, b)
    torch.testing.assert_close(nearest_distances(a, b, squared=True), d2.min(dim=2).values.to(dtype), **CLOSE[dtype])
    torch.testing.assert_close(nearest_distances(b, a, squared=True), d2.min(dim=1).values.to(dtype), **CLOSE[dtype])
    torch.testing.assert_close(chamfer_distance(a, b), _chamfer_twin(a, b).to(dtype), **CLOSE[dtype])


def test_gradient_against_twin_autograd(dtype):
    a0, b0 = _random((2, 30, 3), dtype, 6), _random((2, 45, 3), dtype, 7)
    a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    chamfer_distance(a, b).sum().backward()
    ta, tb = a0.double().requires_grad_(True), b0.double().requires_grad_(True)
    _chamfer_twin(ta, tb).sum().backward()  # the min of the full matrix, differentiated by autograd
    assert a.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(a.grad, ta.grad.to(dtype), **CLOSE[dtype])
    torch.testing.assert_close(b.grad, tb.grad.to(dtype), **CLOSE[dtype])
    # the nearest distances too (unsquared: 1/(2d) times the squared one's)
    a.grad = None
    nearest_distances(a, b).sum().backward()
    ta.grad = None
    _pairwise_twin(ta, tb).min(dim=2).values.sqrt().sum().backward()
    torch.testing.assert_close(a.grad, ta.grad.to(dtype), **CLOSE[dtype])


def test_gradcheck():
    a, b = _random((1, 6, 3), torch.float64, 8), _random((1, 9, 3), torch.float64, 9)
    assert torch.autograd.gradcheck(chamfer_distance, (a.requires_grad_(True), b.requires_grad_(True)), eps=1e-7)


def test_f_score_hand_values(dtype):
    # target t1 = (0,0,0), t2 = (1,0,0), t3 = (0,1,0); predicted points and their nearest target (tau = 0.25):
    #   p1 = (0, 0, 0.25)   -> t1 at 0.25   (exactly tau: within)
    #   p2 = (1, 0.125, 0)  -> t2 at 0.125  (within)
    #   p3 = (0.5, 0.5, 0)  -> t1/t2/t3 at sqrt(0.5) = 0.707 (out)
    #   p4 = (0, 1, 0.5)    -> t3 at 0.5    (out)
    # precision = 2/4; recall: t1 (p1 at 0.25) in, t2 (p2 at 0.125) in, t3 (p4 at 0.5) out = 2/3;
    # F = 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7.
    # tau = 0.2499: p1 and t1 drop out: P = 1/4, R = 1/3, F = 2 * 1/12 / (7/12) = 2/7.
    # tau = 0.5: p4 and t3 come in (exactly tau): P = 3/4, R = 1, F = 2 * 3/4 / (7/4) = 6/7.
    # (all these distances and their squares are exact binary fractions: the edge is tested exactly)
    target = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=dtype)
    pred = torch.tensor([[0, 0, 0.25], [1, 0.125, 0], [0.5, 0.5, 0], [0, 1, 0.5]], dtype=dtype)
    expected = {0.25: (4 / 7, 1 / 2, 2 / 3), 0.2499: (2 / 7, 1 / 4, 1 / 3), 0.5: (6 / 7, 3 / 4, 1.0)}
    for tau, (f, p, r) in expected.items():
        f1, precision, recall = f_score(pred, target, tau)
        assert f1.shape == () and f1.dtype == dtype
        torch.testing.assert_close(torch.stack([f1, precision, recall]), torch.tensor([f, p, r], dtype=dtype))
    # swapping the roles swaps precision and recall, F is the same
    f1, precision, recall = f_score(target, pred, 0.25)
    torch.testing.assert_close(torch.stack([f1, precision, recall]), torch.tensor([4 / 7, 2 / 3, 1 / 2], dtype=dtype))
    # nothing within tau: F = 0 (not NaN)
    f1, precision, recall = f_score(pred + 10, target, 0.25)
    assert f1.item() == 0 and precision.item() == 0 and recall.item() == 0
    # batched: one row per pair
    f1, precision, recall = f_score(torch.stack([pred, pred + 10]), torch.stack([target, target]), 0.25)
    assert f1.shape == (2,)
    torch.testing.assert_close(f1, torch.tensor([4 / 7, 0.0], dtype=dtype))


def test_shift_and_identical_sets_controls(dtype):
    # a 3 x 3 x 3 grid of spacing 0.5 and the same grid shifted by s, |s| = sqrt(0.0129) < 0.25 (half the spacing):
    # every point's nearest neighbour is its own shifted copy, so the chamfer distance is 2 |s|^2 exactly
    g = torch.tensor([-0.5, 0.0, 0.5], dtype=dtype)
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)
    s = torch.tensor([0.1, 0.05, -0.02], dtype=dtype)
    shifted = grid + s
    torch.testing.assert_close(chamfer_distance(grid, shifted), torch.tensor(2 * 0.0129, dtype=dtype), **CLOSE[dtype])
    torch.testing.assert_close(nearest_distances(grid, shifted), torch.full((27,), 0.0129 ** 0.5, dtype=dtype),
                               **CLOSE[dtype])
    # F-score of the shift: all within at tau = 0.12 > |s| = 0.1136, none at 0.11
    assert f_score(grid, shifted, 0.12)[0].item() == 1.0
    assert f_score(grid, shifted, 0.11)[0].item() == 0.0
    # identical sets: chamfer 0, F = 1 at any tau; a permutation changes nothing
    perm = torch.randperm(27, generator=torch.Generator().manual_seed(0))
    assert chamfer_distance(grid, grid[perm]).item() == 0.0
    assert nearest_distances(grid, grid[perm]).abs().max().item() == 0.0
    assert f_score(grid, grid[perm], 1e-9)[0].item() == 1.0
    # duplicating points changes neither (sets, not multisets, for nearest distances)
    assert chamfer_distance(grid, torch.cat([grid, grid])).item() == 0.0


def test_shape_scores_keys():
    a, b = _random((2, 20, 3), torch.float32, 10), _random((2, 30, 3), torch.float32, 11)
    scores = shape_scores(a, b)
    assert set(scores) == {"chamfer"} | {f"{k}@{t:g}" for t in SCORE_TAUS for k in ("f1", "precision", "recall")}
    assert "f1@0.05" in scores and "f1@0.01" in scores
    assert all(v.shape == (2,) for v in scores.values())
    torch.testing.assert_close(scores["f1@0.05"], f_score(a, b, 0.05)[0])


def test_errors():
    a = torch.zeros(4, 3)
    for tau in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            f_score(a, a, tau)
    for bad in (torch.zeros(4, 2), torch.zeros(4), torch.zeros(1, 2, 4, 3), torch.zeros(0, 3), torch.zeros(2, 0, 3)):
        with pytest.raises(ValueError, match="shape"):
            chamfer_distance(bad, a)
        with pytest.raises(ValueError, match="shape"):
            nearest_distances(a, bad)
        with pytest.raises(ValueError, match="shape"):
            f_score(bad, a, 0.1)
    with pytest.raises(ValueError, match="floating"):
        chamfer_distance(torch.zeros(4, 3, dtype=torch.long), a)
    with pytest.raises(ValueError, match="floating"):
        chamfer_distance(a.numpy(), a)
    with pytest.raises(ValueError, match="batch size"):
        chamfer_distance(torch.zeros(2, 4, 3), torch.zeros(3, 4, 3))
    with pytest.raises(ValueError, match="dtype"):
        chamfer_distance(a, a.double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(dtype):
    a, b = _random((2, 300, 3), dtype, 12), _random((2, 1000, 3), dtype, 13)  # CPU: k-d tree; CUDA: matrix product
    ca, cb = a.cuda().requires_grad_(True), b.cuda()
    c = chamfer_distance(ca, cb)
    assert c.device.type == "cuda"
    torch.testing.assert_close(c.cpu(), chamfer_distance(a, b), **CLOSE[dtype])
    c.sum().backward()
    assert ca.grad is not None and ca.grad.device.type == "cuda"
    torch.testing.assert_close(f_score(ca.detach(), cb, 0.05)[0].cpu(), f_score(a, b, 0.05)[0])
