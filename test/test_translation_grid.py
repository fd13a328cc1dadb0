"""Translation grid of SE(3) pyramids: frames, round trips, the cell hierarchy, the Jacobian, sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pose_core import translation_grid as tg


def _frame(dtype=torch.float64, B=3):
    centre = torch.tensor([[0.05, -0.03, 0.8], [-0.2, 0.1, 1.7], [0.0, 0.0, 0.35]], dtype=dtype)[:B]
    return tg.TranslationFrame(centre, torch.tensor([0.12, 0.05, 0.3], dtype=dtype)[:B],
                               torch.tensor([0.3, 0.15, 0.5], dtype=dtype)[:B])


def test_xi_t_round_trip_and_box_geometry(dtype, tol, generator):
    frame = _frame(dtype)
    xi = (torch.rand(3, 50, 3, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)
    t = tg.xi_to_t(frame, xi)
    assert t.shape == (3, 50, 3) and t.dtype == dtype
    torch.testing.assert_close(tg.t_to_xi(frame, t), xi, atol=20 * tol, rtol=0)
    # xi = 0 is the guess; the rays and log-depth follow the definition
    torch.testing.assert_close(tg.xi_to_t(frame, torch.zeros(3, 3, dtype=dtype)), frame.centre, atol=tol, rtol=0)
    c = frame.centre.double()
    x64 = xi.double()
    expect_z = c[:, 2, None] * torch.exp(frame.half_logz.double()[:, None] * x64[..., 2])
    expect_u = (c[:, 0] / c[:, 2])[:, None] + frame.half_xy.double()[:, None] * x64[..., 0]
    torch.testing.assert_close(t[..., 2].double(), expect_z, atol=20 * tol, rtol=0)
    torch.testing.assert_close((t[..., 0] / t[..., 2]).double(), expect_u, atol=20 * tol, rtol=0)
    # negative control: another row's box does not invert this one's
    other = frame.select(torch.tensor([1, 2, 0]))
    assert (tg.t_to_xi(other, t) - xi).abs().max() > 0.1


def test_children_tile_the_parent_in_the_stated_order():
    for level in (0, 1, 2):
        n = tg.cells_per_axis(level)
        parents = torch.arange(tg.num_cells(level))
        kids = tg.children(parents, level)  # (N, 8)
        assert kids.shape == (tg.num_cells(level), 8)
        assert torch.equal(kids.flatten().sort().values, torch.arange(tg.num_cells(level + 1)))
        torch.testing.assert_close(tg.ancestor(kids, level + 1, level), parents[:, None].expand(-1, 8), rtol=0, atol=0)
        # child a*4 + b*2 + c is offset (+-1/2 child width) by sign (a, b, c) from the parent's centre
        pc = tg.cell_centres_xi(level, parents, dtype=torch.float64)
        kc = tg.cell_centres_xi(level + 1, kids, dtype=torch.float64)
        off = torch.arange(8)
        sign = torch.stack((off // 4, (off // 2) % 2, off % 2), -1).double() * 2 - 1
        torch.testing.assert_close(kc - pc[:, None], (sign * (0.5 / n)).expand_as(kc), rtol=0, atol=1e-15)
    # ancestor over several levels
    idx = torch.randint(0, tg.num_cells(3), (100,))
    up2 = tg.ancestor(tg.ancestor(idx, 3, 2), 2, 1)
    assert torch.equal(tg.ancestor(idx, 3, 1), up2)
    # negative control: another child order (b and c swapped) breaks the sign pattern
    swapped = kids[:, [0, 2, 1, 3, 4, 6, 5, 7]]
    kc_bad = tg.cell_centres_xi(3, swapped, dtype=torch.float64)
    assert not torch.allclose(kc_bad - pc[:, None], sign * (0.5 / tg.cells_per_axis(2)))


def test_cell_of_centres_inside_and_outside(dtype):
    frame = _frame(dtype)
    level = 2
    idx = torch.randint(0, tg.num_cells(level), (3, 40), generator=torch.Generator().manual_seed(3))
    t = tg.xi_to_t(frame, tg.cell_centres_xi(level, idx, dtype=dtype))
    got, inside = tg.cell_of(frame, t, level)
    assert torch.equal(got, idx) and bool(inside.all())
    # box edges: xi = +-1 inside (clamped into the end cells); just beyond, behind the camera, NaN: outside
    edge = torch.tensor([[[1.0, -1.0, 1.0]], [[-1.0, 1.0, -1.0]], [[1.0, 1.0, 1.0]]], dtype=torch.float64)
    e_idx, e_in = tg.cell_of(frame, tg.xi_to_t(frame, edge.to(dtype)), level)
    n = tg.cells_per_axis(level)
    assert bool(e_in.all()) and int(e_idx[2, 0]) == tg.num_cells(level) - 1
    assert int(e_idx[0, 0]) == ((n - 1) * n) * n + n - 1  # (i, j, k) = (n - 1, 0, n - 1)
    beyond = tg.xi_to_t(frame, torch.tensor([[[1.02, 0.0, 0.0]], [[0.0, 0.0, -1.03]], [[0.0, 0.0, 0.0]]], dtype=dtype))
    beyond[2, 0] = torch.tensor([0.1, 0.1, -0.5], dtype=dtype)  # behind the camera
    b_idx, b_in = tg.cell_of(frame, beyond, level)
    assert not bool(b_in.any())
    assert bool(((b_idx >= 0) & (b_idx < tg.num_cells(level))).all())
    nan = torch.full((3, 1, 3), math.nan, dtype=dtype)
    assert not bool(tg.cell_of(frame, nan, level)[1].any())
    assert bool(torch.isnan(tg.t_to_xi(frame, beyond)[2]).all())


def test_log_abs_det_jacobian_matches_autograd_and_finite_differences(dtype):
    frame = _frame(dtype)
    xi = torch.tensor([[0.3, -0.7, 0.9], [-0.1, 0.2, -0.8], [0.95, 0.95, 0.0]], dtype=dtype)
    for b in range(3):
        row = frame.select(b)

        def f(x, row=row):
            return tg.xi_to_t(row, x[None])[0]

        J = torch.autograd.functional.jacobian(f, xi[b])
        expect = torch.log(torch.linalg.det(J).abs())
        got = tg.log_abs_det_jacobian(row, f(xi[b])[None])[0]
        torch.testing.assert_close(got, expect, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    # central finite differences in float64 (independent of autograd)
    frame64 = frame.to(dtype=torch.float64)
    x = xi.double()
    h = 1e-6
    cols = []
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = h
        cols.append((tg.xi_to_t(frame64, x + e) - tg.xi_to_t(frame64, x - e)) / (2 * h))
    J = torch.stack(cols, -1)  # (3, 3, 3): row b, d t_i / d xi_k
    got = tg.log_abs_det_jacobian(frame64, tg.xi_to_t(frame64, x))
    torch.testing.assert_close(got, torch.log(torch.linalg.det(J).abs()), atol=1e-7, rtol=0)
    # negative control: the Jacobian depends on depth (z**3): the value at the box centre is wrong off xi2 = 0
    at_centre = tg.log_abs_det_jacobian(frame64, frame64.centre)
    assert (got - at_centre)[:2].abs().min() > 0.3


def test_cell_volumes_sum_to_the_box():
    for level in range(4):
        assert math.isclose(tg.num_cells(level) * math.exp(tg.log_cell_volume_xi(level)), 8.0, rel_tol=1e-12)
    # the box volume in m**3: sum over cells of |J| at the centre (exact: |J| is log-linear, its cell mean is
    # sinh(a)/a times the centre value) against the closed form 4 h_xy**2 z0**3 * 2 sinh(3 h_z) / 3
    frame = _frame(torch.float64)
    level = 3
    idx = torch.arange(tg.num_cells(level)).expand(3, -1)
    t = tg.xi_to_t(frame, tg.cell_centres_xi(level, idx, dtype=torch.float64))
    a = 3 * frame.half_logz / tg.cells_per_axis(level)
    cells = (tg.log_abs_det_jacobian(frame, t) + tg.log_cell_volume_xi(level)).exp().sum(1) * torch.sinh(a) / a
    z0, hxy, hz = frame.centre[:, 2], frame.half_xy, frame.half_logz
    torch.testing.assert_close(cells, 4 * hxy**2 * z0**3 * 2 * torch.sinh(3 * hz) / 3, rtol=1e-12, atol=0)


def test_sample_in_cells_is_uniform_in_xi_and_reproducible(dtype):
    frame = _frame(dtype)
    level = 1
    idx = torch.randint(0, tg.num_cells(level), (3, 4000), generator=torch.Generator().manual_seed(5))
    t = tg.sample_in_cells(frame, level, idx, generator=torch.Generator().manual_seed(7))
    assert t.shape == (3, 4000, 3) and t.dtype == dtype
    got, inside = tg.cell_of(frame, t, level)
    assert torch.equal(got, idx) and bool(inside.all())
    again = tg.sample_in_cells(frame, level, idx, generator=torch.Generator().manual_seed(7))
    assert torch.equal(t, again)
    # position within the cell is uniform along every axis (xi, not t)
    xi = tg.t_to_xi(frame, t).double()
    n = tg.cells_per_axis(level)
    frac = ((xi + 1) * n / 2 - torch.floor((xi + 1) * n / 2)).reshape(-1, 3).numpy()
    for k in range(3):
        assert stats.kstest(frac[:, k], "uniform").pvalue > 1e-3
    # negative control: uniform in z (not log z) is rejected by the same test
    z = frame.centre[0, 2].double() * torch.exp(frame.half_logz[0].double() * torch.tensor([-1.0, 1.0]))
    zs = z[0] + (z[1] - z[0]) * torch.rand(20000, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    xi2 = torch.log(zs / frame.centre[0, 2].double()) / frame.half_logz[0].double()
    assert stats.kstest(((xi2 + 1) / 2).numpy(), "uniform").pvalue < 1e-6
    xi_only = tg.sample_xi_in_cells(level, idx[0, :5], generator=torch.Generator().manual_seed(1))
    assert xi_only.shape == (5, 3) and xi_only.dtype == torch.float32


def test_from_guess_select_and_to(dtype):
    t_hat = torch.tensor([[0.1, 0.0, 0.5], [0.0, -0.2, 2.0]], dtype=dtype)
    frame = tg.TranslationFrame.from_guess(t_hat, 0.075, xy_scale=1.5, logz_half=0.4)
    assert frame.centre.dtype == dtype and len(frame) == 2
    torch.testing.assert_close(frame.half_xy, torch.tensor([1.5 * 0.075 / 0.5, 1.5 * 0.075 / 2.0], dtype=dtype))
    torch.testing.assert_close(frame.half_logz, torch.full((2,), 0.4, dtype=dtype))
    # the in-plane half-range at the guessed depth is xy_scale object radii
    edge = tg.xi_to_t(frame, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype))
    torch.testing.assert_close((edge - t_hat).norm(dim=1), torch.full((2,), 1.5 * 0.075, dtype=dtype))
    per_row = tg.TranslationFrame.from_guess(t_hat, torch.tensor([0.05, 0.1], dtype=dtype), 1.0, 0.2)
    torch.testing.assert_close(per_row.half_xy, torch.tensor([0.1, 0.05], dtype=dtype))
    one = frame.select(1)
    assert len(one) == 1 and torch.equal(one.centre, t_hat[1:])
    assert torch.equal(frame.select(torch.tensor([False, True])).centre, one.centre)
    assert torch.equal(frame[0:1].half_xy, frame.half_xy[:1])
    moved = frame.to("cpu", dtype=torch.float64)
    assert moved.dtype == torch.float64 and moved.device.type == "cpu"


def test_bad_inputs_raise_value_error():
    good = _frame()
    with pytest.raises(ValueError, match="z > 0"):
        tg.TranslationFrame.from_guess(torch.tensor([[0.0, 0.0, -1.0]]), 0.1)
    with pytest.raises(ValueError, match="> 0"):
        tg.TranslationFrame.from_guess(torch.tensor([[0.0, 0.0, 1.0]]), 0.0)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        tg.TranslationFrame.from_guess(torch.tensor([0.0, 0.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        tg.TranslationFrame.from_guess(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="finite and > 0"):
        tg.TranslationFrame(good.centre, -good.half_xy, good.half_logz)
    with pytest.raises(ValueError, match="expected centre"):
        tg.TranslationFrame(good.centre, good.half_xy[:2], good.half_logz)
    with pytest.raises(ValueError, match=r"\(3, \.\.\., 3\)"):
        tg.xi_to_t(good, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(3, \.\.\., 3\)"):
        tg.t_to_xi(good, torch.zeros(3, 4))
    for bad in (-1, 11, 1.5, True):
        with pytest.raises(ValueError, match="level"):
            tg.num_cells(bad)
    with pytest.raises(ValueError, match="integer tensor"):
        tg.children(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="no children"):
        tg.children(torch.zeros(3, dtype=torch.int64), tg.MAX_LEVEL)
    with pytest.raises(ValueError, match="to_level"):
        tg.ancestor(torch.zeros(3, dtype=torch.int64), 1, 2)
    with pytest.raises(ValueError, match=r"\(3, \.\.\.\)"):
        tg.sample_in_cells(good, 0, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(IndexError):
        good.select(5)
    assert np.isfinite(tg.log_cell_volume_xi(10))
