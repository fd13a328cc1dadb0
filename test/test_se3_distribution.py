"""SE3Distribution: normalisation, pyramid vs exhaustive search, a known anisotropic SE(3) Gaussian, sampling,
marginals, entropy, covariance (with rotation-translation cross terms), batching and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pose_core import grids, so3
from pose_core import translation_grid as tg
from pose_core.distribution import SO3Distribution
from pose_core.distributions import SE3Distribution, TranslationDistribution
from pose_core.distributions import se3 as se3_module


def _log_vrot(level):
    return so3.LOG_HAAR_VOLUME - math.log(72) - level * math.log(8)


def _frame(dtype=torch.float64, B=1):
    centre = torch.tensor([[0.05, -0.03, 0.8], [-0.1, 0.08, 1.5], [0.0, 0.02, 0.4]], dtype=dtype)[:B]
    return tg.TranslationFrame(centre, torch.tensor([0.12, 0.06, 0.2], dtype=dtype)[:B],
                               torch.tensor([0.3, 0.2, 0.4], dtype=dtype)[:B])


class Gaussian:
    """``p(R, t) ~ exp(-x^T Sigma^-1 x / 2)``, ``x = (t - t0, omega)``, ``R = exp([omega]x) @ R0`` (Haar x m³),
    one per row."""

    def __init__(self, frame, t0, R0, Sigma):
        self.frame64 = frame.to(dtype=torch.float64)
        self.dtype = frame.dtype
        self.t0, self.R0 = t0.double(), R0.double()  # (B, 3), (B, 3, 3)
        self.Sigma = Sigma.double()  # (B, 6, 6)
        self.P = torch.linalg.inv(self.Sigma)

    @classmethod
    def standard(cls, frame, scale=1.0, cross=True):
        B = frame.batch_size
        t0 = frame.centre.double() * torch.tensor([1.08, 1.1, 1.012], dtype=torch.float64)
        R0 = so3.rotvec_to_matrix(torch.tensor([[0.9, -0.4, 1.3], [-2.0, 0.5, 0.3], [0.1, 2.5, -0.4]],
                                               dtype=torch.float64)[:B])
        sd = torch.tensor([0.02, 0.012, 0.04, *np.radians([10.0, 18.0, 12.0])], dtype=torch.float64)
        corr = torch.eye(6, dtype=torch.float64)
        if cross:
            corr[0, 4] = corr[4, 0] = 0.6  # x with rotation about Y
            corr[2, 3] = corr[3, 2] = -0.4  # z with rotation about X
        z = frame.centre[:, 2].double() / 0.8
        sd = sd * scale * torch.stack([z, z, z, torch.ones_like(z), torch.ones_like(z), torch.ones_like(z)], 1)
        return cls(frame, t0, R0, sd[:, :, None] * corr * sd[:, None, :])

    def terms(self, R, t):
        """``-x^T P x / 2`` for rotations ``R`` ``(B, ..., Nr, 3, 3)`` times translations ``t`` ``(B, ..., Nt, 3)``
        (all pairs): ``(B, ..., Nr, Nt)``."""
        shape = (-1,) + (1,) * (R.dim() - 3) + (3, 3)
        w = so3.matrix_to_rotvec(R.double() @ self.R0.transpose(1, 2).reshape(shape))
        dt = t.double() - self.t0.reshape((-1,) + (1,) * (t.dim() - 2) + (3,))
        P = self.P.reshape((-1,) + (1,) * (R.dim() - 4) + (6, 6))
        q = (torch.einsum("...ri,...ij,...rj->...r", w, P[..., 3:, 3:], w)[..., :, None]
             + torch.einsum("...ti,...ij,...tj->...t", dt, P[..., :3, :3], dt)[..., None, :]
             + 2 * torch.einsum("...ri,...ij,...tj->...rt", w, P[..., 3:, :3], dt))
        return -0.5 * q

    def score(self, depth=0, depth0=None):
        """``score_fn`` with the log-mass of each cell by the midpoint rule on its descendants ``depth`` levels down
        (``depth0`` at level 0, default ``depth``)."""

        def fn(level, rot, trans):
            depth_here = depth if level or depth0 is None else depth0
            rd, td = rot[..., None], trans[..., None]
            for d in range(depth_here):
                rd = grids.children(rd, level + d).flatten(-2)
                td = tg.children(td, level + d).flatten(-2)
            fine = level + depth_here
            R = grids.cell_rotations(fine, rd, dtype=torch.float64)
            t = tg.xi_to_t(self.frame64, tg.cell_centres_xi(fine, td, dtype=torch.float64))
            val = self.terms(R, t) + tg.log_abs_det_jacobian(self.frame64, t)[..., None, :]
            out = torch.logsumexp(val.flatten(-2), -1) + _log_vrot(fine) + tg.log_cell_volume_xi(fine)
            return out.to(self.dtype)

        return fn


def _random_score(seed, scale=2.0):
    gen = torch.Generator().manual_seed(seed)

    def fn(level, rot, trans):
        return torch.randn(rot.shape, generator=gen, dtype=torch.float64) * scale

    return fn


def _so3_log_density(d: SO3Distribution, R):
    """Log-density of a (multi-level, padded) grid SO3Distribution at ``R`` ``(B, M, 3, 3)`` by cell look-up."""
    out = torch.full(R.shape[:2], -math.inf, dtype=torch.float64)
    for lv in torch.unique(d.cell_level).tolist():
        cols = d.cell_level == lv
        idx, lm = d.cell_index[:, cols], d.log_mass[:, cols].double()
        q = grids.cell_of(R, lv)
        match = (idx[:, None, :] == q[..., None]) & torch.isfinite(lm)[:, None, :]
        val = torch.where(match, lm[:, None, :], -math.inf).amax(-1) - _log_vrot(lv)
        out = torch.maximum(out, val)
    return out


# ---------------------------------------------------------------------------------------------- normalisation


def test_pyramid_structure_and_exact_normalisation(dtype):
    B, levels, top_k = 3, 3, 8
    frame = _frame(dtype, B)
    d = SE3Distribution.from_pyramid(_random_score(1), frame, levels, top_k)
    assert d.log_mass.dtype == torch.float64  # the scores' dtype
    d = SE3Distribution.from_pyramid(lambda lv, r, t: _random_score(1)(lv, r, t).to(dtype), frame, levels, top_k)
    assert d.log_mass.dtype == dtype and len(d) == B and d.finest_level == levels - 1
    assert d.log_mass.shape == (B, 576 + (levels - 1) * 64 * top_k)
    torch.testing.assert_close(d.log_mass.exp().sum(1).double(), torch.ones(B, dtype=torch.float64))
    for lv in range(levels - 1):  # top_k expanded cells (-inf) per level, none at the finest
        assert int(torch.isneginf(d.log_mass[:, d.cell_level == lv]).sum(1).min()) == top_k
    assert bool(torch.isfinite(d.log_mass[:, d.cell_level == levels - 1]).all())
    # a block of 64 children: 8 rotation children x 8 translation children of one expanded parent, in that order
    block = slice(576, 576 + 64)
    p_rot = grids.ancestor(d.rot_index[:, block], 1, 0)
    p_trans = tg.ancestor(d.trans_index[:, block], 1, 0)
    assert bool((p_rot == p_rot[:, :1]).all() & (p_trans == p_trans[:, :1]).all())
    kids = grids.children(p_rot[:, 0], 0)[:, :, None].expand(-1, 8, 8).reshape(B, 64)
    assert torch.equal(d.rot_index[:, block], kids)
    kids = tg.children(p_trans[:, 0], 0)[:, None, :].expand(-1, 8, 8).reshape(B, 64)
    assert torch.equal(d.trans_index[:, block], kids)
    parent_col = p_rot[:, 0] * 8 + p_trans[:, 0]  # level-0 columns are in flat order
    assert bool(torch.isneginf(d.log_mass.gather(1, parent_col[:, None])).all())
    # the exact integral: p |J| is constant on every finest (rotation cell x xi cell), so the midpoint sum is exact
    d = SE3Distribution.from_pyramid(lambda lv, r, t: _random_score(3)(lv, r, t).to(dtype), frame, 2, top_k)
    L = 1
    Rc = grids.so3_healpix_grid(L, dtype=dtype)  # (Nr, 3, 3)
    xi = tg.cell_centres_xi(L, torch.arange(tg.num_cells(L)), dtype=dtype)
    t = tg.xi_to_t(frame, xi.expand(B, -1, -1))  # (B, Nt, 3)
    Nr, Nt = Rc.shape[0], xi.shape[0]
    R = Rc[:, None].expand(Nr, Nt, 3, 3).reshape(1, -1, 3, 3).expand(B, -1, -1, -1)
    tt = t[:, None].expand(B, Nr, Nt, 3).reshape(B, -1, 3)
    lp = d.log_prob(R, tt).double()  # w.r.t. m**3
    log_cell = _log_vrot(L) + tg.log_cell_volume_xi(L)
    integral = (lp + tg.log_abs_det_jacobian(frame, tt).double() + log_cell).exp().sum(1)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(integral, torch.ones(B, dtype=torch.float64), atol=atol, rtol=0)
    # negative control: summing over xi cells without the Jacobian is far from one
    assert bool(((lp + log_cell).exp().sum(1) - 1).abs().min() > 0.5)


def test_monte_carlo_integral_over_t_is_one(generator):
    """Integrate exp(log_prob) with t uniform in an axis-aligned box around the frustum (no xi involved)."""
    frame = _frame(torch.float64, 2)
    d = SE3Distribution.from_pyramid(_random_score(2, scale=1.0), frame, 2, 16)
    corners = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=torch.float64)
    pts = tg.xi_to_t(frame, corners.expand(2, -1, -1))
    lo, hi = pts.min(1).values, pts.max(1).values  # the frustum's corners bound it (x, y linear in z at fixed xi)
    n = 200_000
    u = torch.rand(2, n, 3, generator=generator, dtype=torch.float64)
    t = lo[:, None] + (hi - lo)[:, None] * u
    R = so3.random_rotations(2 * n, generator=generator, dtype=torch.float64).reshape(2, n, 3, 3)
    p = d.log_prob(R, t).exp()
    volume = (hi - lo).prod(1) * math.pi**2
    est = p.mean(1) * volume
    se = p.std(1) / math.sqrt(n) * volume
    assert bool(((est - 1).abs() < 4 * se + 1e-3).all()), (est, se)
    assert float(se.max()) < 0.02
    # negative control: the density w.r.t. xi (Jacobian dropped) is rejected by the same estimate
    inside = torch.isfinite(p.log())
    lj = torch.where(inside, tg.log_abs_det_jacobian(frame, t), torch.zeros_like(p))
    wrong = (d.log_prob(R, t) + lj).exp().mean(1) * volume
    assert bool(((wrong - 1).abs() > 10 * se).all())


def test_uniform_distribution_density_entropy_and_moments(dtype, tol):
    B = 3
    frame = _frame(dtype, B)
    d = SE3Distribution.from_grid_logits(torch.zeros(B, 576, dtype=dtype), None, frame)
    g = torch.Generator().manual_seed(4)
    R = so3.random_rotations(B * 10, generator=g, dtype=dtype).reshape(B, 10, 3, 3)
    xi = (torch.rand(B, 10, 3, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    t = tg.xi_to_t(frame, xi)
    expect = -so3.LOG_HAAR_VOLUME - math.log(8) - tg.log_abs_det_jacobian(frame, t)
    torch.testing.assert_close(d.log_prob(R, t), expect, atol=100 * tol, rtol=0)
    # entropy: log(pi^2) + log 8 + E[log|J|], and E[log|J|] = its value at xi = 0
    ent = so3.LOG_HAAR_VOLUME + math.log(8) + tg.log_abs_det_jacobian(frame, frame.centre)
    torch.testing.assert_close(d.entropy(), ent, atol=100 * tol, rtol=0)
    # mean translation: E[z] (u0, v0, 1) with E[z] = z0 sinh(h)/h (log z uniform)
    h = frame.half_logz.double()
    c = frame.centre.double()
    mean = (c / c[:, 2:]) * (c[:, 2] * torch.sinh(h) / h)[:, None]
    tm = d.translation_marginal()
    assert isinstance(tm, TranslationDistribution)
    torch.testing.assert_close(tm.mean().double(), mean, atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=0)
    # the rotation marginal is uniform on SO(3)
    rm = d.rotation_marginal()
    torch.testing.assert_close(_so3_log_density(rm, R.double()), torch.full((B, 10), -so3.LOG_HAAR_VOLUME,
                                                                             dtype=torch.float64), atol=1e-5, rtol=0)
    # outside the box: -inf
    out = tg.xi_to_t(frame, torch.tensor([[[1.1, 0, 0]], [[0, -1.2, 0]], [[0, 0, 1.05]]], dtype=dtype))
    assert bool(torch.isneginf(d.log_prob(R[:, :1], out)).all())


# ---------------------------------------------------------------------------------------------- pyramid vs exhaustive


def _consistent_score(gauss):
    """Level 1: midpoint log-mass; level 0: logsumexp of its 64 children's (so the pyramid is exact where expanded)."""
    fine = gauss.score(0)

    def fn(level, rot, trans):
        if level == 1:
            return fine(1, rot, trans)
        B, M = rot.shape
        cr = grids.children(rot, 0)[..., :, None].expand(B, M, 8, 8).reshape(B, M * 64)
        ct = tg.children(trans, 0)[..., None, :].expand(B, M, 8, 8).reshape(B, M * 64)
        return torch.logsumexp(fine(1, cr, ct).reshape(B, M, 64).double(), -1).to(gauss.dtype)

    return fn


def test_pyramid_mode_equals_exhaustive_search_at_level_1(dtype):
    B = 2
    frame = _frame(dtype, B)
    gauss = Gaussian.standard(frame, scale=0.8)
    score = _consistent_score(gauss)
    pyr = SE3Distribution.from_pyramid(score, frame, levels=2, top_k=16)
    n = se3_module.num_cells(1)
    flat = torch.arange(n).expand(B, -1)
    logits = score(1, flat // tg.num_cells(1), flat % tg.num_cells(1))
    full = SE3Distribution.from_grid_logits(logits, 1, frame)
    assert full.log_mass.shape == (B, 36864)
    R_p, t_p = pyr.mode()
    R_f, t_f = full.mode()
    torch.testing.assert_close(R_p, R_f, rtol=0, atol=0)
    torch.testing.assert_close(t_p, t_f, rtol=0, atol=0)
    atol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(pyr.max_log_density(), full.max_log_density(), atol=atol, rtol=0)
    # the expanded cells' masses are the exhaustive ones
    cols = pyr.cell_level == 1
    keys = pyr.rot_index[:, cols] * tg.num_cells(1) + pyr.trans_index[:, cols]
    torch.testing.assert_close(pyr.log_mass[:, cols], torch.gather(full.log_mass, 1, keys), atol=atol, rtol=0)
    # and the mode is within a cell of the Gaussian's centre
    assert bool((so3.geodesic_distance(R_p.double(), gauss.R0) < grids.resolution(1)).all())
    # negative control: a pyramid that expands the wrong parents (level-0 scores negated) misses the mode
    def bad(level, rot, trans):
        return -score(level, rot, trans) if level == 0 else score(level, rot, trans)

    R_b, t_b = SE3Distribution.from_pyramid(bad, frame, levels=2, top_k=16).mode()
    assert not torch.equal(R_b, R_f) or not torch.equal(t_b, t_f)


# ---------------------------------------------------------------------------------------------- a known Gaussian


def test_recovers_an_anisotropic_gaussian_with_rotation_translation_cross_terms(dtype):
    frame = _frame(dtype, 1)
    gauss = Gaussian.standard(frame)
    d = SE3Distribution.from_pyramid(gauss.score(1, depth0=2), frame, levels=4, top_k=256)  # masses integrated
    Sigma = gauss.Sigma[0]
    C = d.covariance(about=(gauss.R0.to(dtype), gauss.t0.to(dtype)))[0].double()
    assert C.dtype == torch.float64 and torch.allclose(C, C.T)
    assert float(torch.linalg.eigvalsh(C).min()) > 0
    rel = float((C - Sigma).norm() / Sigma.norm())
    assert rel < 0.12, (C, Sigma)
    ratio = (C / Sigma).diagonal()
    assert bool(((ratio > 0.95) & (ratio < 1.45)).all()), ratio  # coarse leaves add their cell size (Sheppard)
    for i, j in ((0, 4), (2, 3)):  # the real cross terms
        assert 0.93 < float(C[i, j] / Sigma[i, j]) < 1.07, (i, j, C[i, j], Sigma[i, j])
    # mode within a finest cell; translation marginal mean near the centre
    R_m, t_m = d.mode()
    assert float(so3.geodesic_distance(R_m[0].double(), gauss.R0[0])) < grids.resolution(3)
    xi_m = tg.t_to_xi(frame.to(dtype=torch.float64), t_m.double())[0]
    xi_0 = tg.t_to_xi(frame.to(dtype=torch.float64), gauss.t0)[0]
    assert bool(((xi_m - xi_0).abs() <= 2 / tg.cells_per_axis(3)).all())
    tm = d.translation_marginal()
    assert float((tm.mean()[0].double() - gauss.t0[0]).norm()) < 2e-3
    torch.testing.assert_close(tm.covariance(about=gauss.t0.to(dtype))[0].double(), C[:3, :3],
                               atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=1e-4)
    # negative controls: the right-perturbation convention (R0^T omega) does not match
    A = gauss.R0[0].T
    wrong = A @ Sigma[3:, 3:] @ A.T
    assert float((wrong - Sigma[3:, 3:]).norm()) > 3 * float((C[3:, 3:] - Sigma[3:, 3:]).norm())
    # and without the cross terms in the density, none are reported
    plain = Gaussian.standard(frame, cross=False)
    Cp = SE3Distribution.from_pyramid(plain.score(1, depth0=2), frame, levels=4, top_k=256).covariance(
        about=(plain.R0.to(dtype), plain.t0.to(dtype)))[0].double()
    assert abs(float(Cp[0, 4])) < 0.1 * abs(float(Sigma[0, 4])) and abs(float(Cp[2, 3])) < 0.1 * abs(float(Sigma[2, 3]))


def test_covariance_matches_samples_with_cross_terms(dtype):
    frame = _frame(dtype, 2)
    gauss = Gaussian.standard(frame)
    d = SE3Distribution.from_pyramid(gauss.score(0), frame, levels=3, top_k=16)
    n = 60_000
    R, t = d.sample(n, generator=torch.Generator().manual_seed(11))
    R_m, t_m = d.mode()
    x = torch.cat((t.double() - t_m.double()[:, None], so3.matrix_to_rotvec(R.double() @ R_m.double()[:, None]
                                                                              .transpose(-1, -2))), -1)
    emp = x.transpose(1, 2) @ x / n  # (B, 6, 6)
    C = d.covariance().double()
    assert C.shape == (2, 6, 6)
    for b in range(2):
        blocks = {"tt": (slice(0, 3), slice(0, 3), 0.03), "ww": (slice(3, 6), slice(3, 6), 0.08),
                  "tw": (slice(0, 3), slice(3, 6), 0.08)}
        for name, (i, j, limit) in blocks.items():
            err = float((emp[b, i, j] - C[b, i, j]).norm() / C[b, i, j].norm())
            assert err < limit, (b, name, err)
        # the cross terms are real: the correlation of x with rotation about Y is recovered (0.6 in the density)
        assert 0.4 < float(C[b, 0, 4] / (C[b, 0, 0] * C[b, 4, 4]).sqrt()) < 0.7
    # negative control: the covariance about another pose differs by its offset
    shifted = d.covariance(about=(R_m, t_m + 0.01)).double()
    assert float((shifted[:, :3, :3] - C[:, :3, :3]).norm()) > 10 * float((emp[:, :3, :3] - C[:, :3, :3]).norm())


# ---------------------------------------------------------------------------------------------- sampling, entropy


def _level1_masses(d):
    """Mass ``(36864,)`` of each level-1 SE(3) cell (row 0): a level-0 leaf gives 1/64 to each of its children,
    finer leaves give theirs to their level-1 ancestor."""
    nt1 = tg.num_cells(1)
    out = torch.zeros(se3_module.num_cells(1), dtype=torch.float64)
    p = d.mass()[0].double()
    for lv in range(d.finest_level + 1):
        cols = d.cell_level == lv
        r, tr, m = d.rot_index[0, cols], d.trans_index[0, cols], p[cols]
        if lv == 0:
            kr = grids.children(r, 0)[:, :, None].expand(-1, 8, 8).reshape(-1)
            kt = tg.children(tr, 0)[:, None, :].expand(-1, 8, 8).reshape(-1)
            out.index_add_(0, kr * nt1 + kt, (m / 64).repeat_interleave(64))
        else:
            out.index_add_(0, grids.ancestor(r, lv, 1) * nt1 + tg.ancestor(tr, lv, 1), m)
    return out


def test_samples_follow_the_cell_masses_chi_square():
    frame = _frame(torch.float64, 1)
    gauss = Gaussian.standard(frame, scale=2.0)
    d = SE3Distribution.from_pyramid(gauss.score(0), frame, levels=3, top_k=8)
    assert float(d.mass()[0, d.cell_level == 0].sum()) > 0.01  # every level holds mass
    n = 30_000
    R, t = d.sample(n, generator=torch.Generator().manual_seed(21))
    assert R.shape == (1, n, 3, 3) and t.shape == (1, n, 3)
    # continuous: not the cell centres
    centres = grids.cell_rotations(2, grids.cell_of(R[0, :100], 2), dtype=torch.float64)
    assert float(so3.geodesic_distance(R[0, :100], centres).min()) > 0
    expected = _level1_masses(d)
    torch.testing.assert_close(expected.sum(), torch.tensor(1.0, dtype=torch.float64))
    ti, inside = tg.cell_of(frame, t, 1)
    assert bool(inside.all())
    key = (grids.cell_of(R, 1) * tg.num_cells(1) + ti)[0]
    observed = np.bincount(key.numpy(), minlength=se3_module.num_cells(1)).astype(np.float64)
    keep = expected.numpy() * n > 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected.numpy()[keep], expected.numpy()[~keep].sum()) * n
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # negative control: the masses of another distribution are rejected
    other = _level1_masses(SE3Distribution.from_pyramid(Gaussian.standard(frame, scale=2.6).score(0), frame, 3, 8))
    exp_other = np.append(other.numpy()[keep], other.numpy()[~keep].sum()) * n
    assert stats.chisquare(obs, exp_other).pvalue < 1e-6


def test_entropy_matches_monte_carlo(dtype):
    frame = _frame(dtype, 2)
    d = SE3Distribution.from_pyramid(Gaussian.standard(frame).score(0), frame, levels=3, top_k=16)
    R, t = d.sample(20_000, generator=torch.Generator().manual_seed(5))
    lp = d.log_prob(R, t).double()
    assert bool(torch.isfinite(lp).all())
    mc, se = -lp.mean(1), lp.std(1) / math.sqrt(lp.shape[1])
    H = d.entropy().double()
    assert bool(((H - mc).abs() < 4 * se + 1e-3).all()), (H, mc, se)
    # negative control: the entropy w.r.t. xi (Jacobian dropped) is far off
    lj = tg.log_abs_det_jacobian(frame, t).double()
    assert bool(((-(lp + lj).mean(1) - H).abs() > 20 * se).all())
    # a sharper distribution has lower entropy
    sharp = SE3Distribution.from_pyramid(Gaussian.standard(frame, scale=0.5).score(0), frame, levels=3, top_k=16)
    assert bool((sharp.entropy() < d.entropy()).all())


# ---------------------------------------------------------------------------------------------- marginals


def test_rotation_marginal_equals_brute_force(dtype):
    B = 2
    frame = _frame(dtype, B)
    d = SE3Distribution.from_pyramid(Gaussian.standard(frame, scale=1.5).score(0), frame, levels=3, top_k=8)
    rm = d.rotation_marginal()
    assert isinstance(rm, SO3Distribution) and rm.batch_size == B
    torch.testing.assert_close(rm.log_mass.exp().sum(1).double(), torch.ones(B, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    g = torch.Generator().manual_seed(8)
    R_s, _ = d.sample(12, generator=g)
    R = torch.cat((R_s, so3.random_rotations(B * 8, generator=g, dtype=dtype).reshape(B, 8, 3, 3)), 1)  # (B, 20)
    # brute force: integrate p over t on the finest xi cells (p |J| is constant on each, given R)
    L = d.finest_level
    xi = tg.cell_centres_xi(L, torch.arange(tg.num_cells(L)), dtype=dtype)
    t = tg.xi_to_t(frame, xi.expand(B, -1, -1))  # (B, Nt, 3)
    M, Nt = R.shape[1], xi.shape[0]
    RR = R[:, :, None].expand(B, M, Nt, 3, 3).reshape(B, -1, 3, 3)
    tt = t[:, None].expand(B, M, Nt, 3).reshape(B, -1, 3)
    lp = (d.log_prob(RR, tt) + tg.log_abs_det_jacobian(frame, tt)).double().reshape(B, M, Nt)
    brute = torch.logsumexp(lp, -1) + tg.log_cell_volume_xi(L)
    got = _so3_log_density(rm, R.double())
    atol = 2e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(got, brute, atol=atol, rtol=0)
    assert float(brute.max() - brute.min()) > 3  # the points span dense and sparse regions
    # negative control: the coarse leaves' share matters: the finest leaves alone give other densities
    cols = d.cell_level == L
    hit = d.rot_index[:, cols][:, None, :] == grids.cell_of(R, L)[..., None]
    finest_only = torch.log((d.mass()[:, cols].double()[:, None, :] * hit).sum(-1)) - _log_vrot(L)
    assert float((finest_only - brute).abs().max()) > 1e-3
    # exhaustive grids: the marginal is the logsumexp over translation cells
    logits = torch.randn(B, se3_module.num_cells(1), generator=g, dtype=torch.float64).to(dtype)
    full = SE3Distribution.from_grid_logits(logits, 1, frame)
    expect = torch.log_softmax(torch.logsumexp(logits.reshape(B, -1, tg.num_cells(1)), -1), 1)
    rmf = full.rotation_marginal()
    torch.testing.assert_close(rmf.cell_index, torch.arange(grids.num_cells(1)).expand(B, -1))
    torch.testing.assert_close(rmf.log_mass, expect, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


def test_translation_marginal_equals_brute_force(dtype):
    B = 2
    frame = _frame(dtype, B)
    d = SE3Distribution.from_pyramid(Gaussian.standard(frame, scale=1.5).score(0), frame, levels=3, top_k=8)
    tm = d.translation_marginal()
    torch.testing.assert_close(tm.log_mass.exp().sum(1).double(), torch.ones(B, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    g = torch.Generator().manual_seed(9)
    _, t_s = d.sample(10, generator=g)
    xi = (torch.rand(B, 6, 3, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    t = torch.cat((t_s, tg.xi_to_t(frame, xi)), 1)  # (B, 16, 3)
    L = d.finest_level
    Rc = grids.so3_healpix_grid(L, dtype=dtype)
    M, Nr = t.shape[1], Rc.shape[0]
    RR = Rc[None, None].expand(B, M, Nr, 3, 3).reshape(B, -1, 3, 3)
    tt = t[:, :, None].expand(B, M, Nr, 3).reshape(B, -1, 3)
    brute = torch.logsumexp(d.log_prob(RR, tt).double().reshape(B, M, Nr), -1) + _log_vrot(L)
    got = tm.log_prob(t).double()
    torch.testing.assert_close(got, brute, atol=2e-4 if dtype == torch.float32 else 1e-9, rtol=0)
    assert float(brute.max() - brute.min()) > 3
    # the marginal's moments are the SE(3) covariance's translation block; mode and samples in the box
    mean = tm.mean()
    C = d.covariance(about=(d.mode()[0], mean))
    torch.testing.assert_close(tm.covariance(), C[:, :3, :3], atol=1e-7 if dtype == torch.float32 else 1e-14,
                               rtol=1e-4)
    assert bool(tg.cell_of(frame, tm.sample(50, generator=g), 2)[1].all())
    assert tm.mode().shape == (B, 3) and bool(torch.isfinite(tm.entropy()).all())
    # negative control: another row's marginal differs
    assert not torch.allclose(tm.select(torch.tensor([1, 0])).log_prob(t.flip(0)).double(), brute, atol=1e-2)


# ---------------------------------------------------------------------------------------------- batching, devices


def test_select_to_repr_and_batch_of_one():
    frame = _frame(torch.float64, 3)
    d = SE3Distribution.from_pyramid(Gaussian.standard(frame).score(0), frame, levels=2, top_k=4)
    R, t = d.sample(5, generator=torch.Generator().manual_seed(2))
    lp = d.log_prob(R, t)
    one = d.select(1)
    assert len(one) == 1 and one.frame.batch_size == 1
    torch.testing.assert_close(one.log_prob(R[1:2], t[1:2]), lp[1:2])
    torch.testing.assert_close(one.log_prob(R[1:2, 0], t[1:2, 0]), lp[1:2, 0])  # (B, 3, 3), (B, 3) -> (B,)
    torch.testing.assert_close(d[torch.tensor([2, 0])].covariance(), d.covariance()[[2, 0]])
    torch.testing.assert_close(d[0:2].entropy(), d.entropy()[:2])
    torch.testing.assert_close(d.to("cpu").mode()[1], d.mode()[1])
    assert "SE3Distribution(batch=3" in repr(d)
    assert d.mode_resolution() == grids.resolution(1)
    assert d.mass().shape == d.log_mass.shape and float(d.mass().sum()) == pytest.approx(3.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    frame = _frame(torch.float64, 2)
    score = Gaussian.standard(frame).score(0)
    cpu = SE3Distribution.from_pyramid(score, frame, levels=3, top_k=8)

    def gpu_score(level, rot, trans):
        return score(level, rot.cpu(), trans.cpu()).cuda()

    gpu = SE3Distribution.from_pyramid(gpu_score, frame.to("cuda"), levels=3, top_k=8)
    assert gpu.log_mass.device.type == "cuda"
    torch.testing.assert_close(gpu.log_mass.cpu(), cpu.log_mass)
    torch.testing.assert_close(gpu.covariance().cpu(), cpu.covariance(), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(gpu.entropy().cpu(), cpu.entropy())
    R, t = cpu.sample(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gpu.log_prob(R.cuda(), t.cuda()).cpu(), cpu.log_prob(R, t))
    Rg, tg_ = gpu.sample(10, generator=torch.Generator().manual_seed(0))
    assert Rg.device.type == "cuda" and torch.allclose(tg_.cpu(), t)
    torch.testing.assert_close(gpu.rotation_marginal().log_mass.cpu(), cpu.rotation_marginal().log_mass)
    torch.testing.assert_close(gpu.translation_marginal().mean().cpu(), cpu.translation_marginal().mean())


def test_bad_inputs_raise_value_error():
    frame = _frame(torch.float64, 2)
    with pytest.raises(ValueError, match="SE\\(3\\) grid size"):
        SE3Distribution.from_grid_logits(torch.zeros(2, 100), None, frame)
    with pytest.raises(ValueError, match="level 0, not 1"):
        SE3Distribution.from_grid_logits(torch.zeros(2, 576), 1, frame)
    with pytest.raises(ValueError, match="frame has 2 rows"):
        SE3Distribution.from_grid_logits(torch.zeros(3, 576), 0, frame)
    with pytest.raises(ValueError, match="levels"):
        SE3Distribution.from_pyramid(_random_score(0), frame, 0, 4)
    with pytest.raises(ValueError, match="top_k"):
        SE3Distribution.from_pyramid(_random_score(0), frame, 2, 0)
    with pytest.raises(ValueError, match=r"shape \(2, 576\)"):
        SE3Distribution.from_pyramid(lambda lv, r, t: torch.zeros(2, 5), frame, 2, 4)
    with pytest.raises(ValueError, match="NaN"):
        SE3Distribution.from_pyramid(lambda lv, r, t: torch.full(r.shape, math.nan), frame, 2, 4)
    with pytest.raises(ValueError, match="-inf to all 64 children"):
        SE3Distribution.from_pyramid(lambda lv, r, t: torch.full(r.shape, -math.inf if lv else 0.0), frame, 2, 4)
    d = SE3Distribution.from_grid_logits(torch.zeros(2, 576), 0, frame)
    with pytest.raises(ValueError, match=r"\(2, M, 3, 3\)"):
        d.log_prob(torch.eye(3).expand(2, 4, 3, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="n must be"):
        d.sample(0)
    with pytest.raises(ValueError, match="about"):
        d.covariance(about=(torch.eye(3), torch.zeros(3)))
    with pytest.raises(ValueError, match="expected cell_level"):
        SE3Distribution(d.cell_level, d.rot_index, d.trans_index[:1], d.log_mass, frame)
    with pytest.raises(ValueError, match="TranslationFrame of 2 rows"):
        SE3Distribution(d.cell_level, d.rot_index, d.trans_index, d.log_mass, frame.select(0))
    with pytest.raises(IndexError):
        d.select(2)
    with pytest.raises(ValueError, match=r"\(2, 3\) or \(2, M, 3\)"):
        d.translation_marginal().log_prob(torch.zeros(3, 3))
