"""pose_core.tracking: the temporal filter (prior normalisation, flips, lag, jumps, resets) and its pipeline wiring.

Synthetic sequences come from a stand-in model whose ``predict`` returns a chosen band-limited
distribution per frame (sums of band-limited delta kernels at chosen rotations, like
``test_coarse_to_fine``), so the filter is tested on exactly known modes, fast, without images.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core import SO3Distribution, grids, so3, wigner
from pose_core.model import InferenceSettings
from pose_core.pipeline import Box, EstimatorSettings, PoseEstimator
from pose_core.summary import summarize
from pose_core.tracking import (
    CompactPosterior,
    DiffusedPrior,
    Tracker,
    choose_branch,
    compact_posteriors,
    rotation_noise_log_density,
)

LMAX = 6
KAPPA = 0.04  # kernel scale: peaks ~ +4 nats, 10 deg off ~ 2 nats lower, far ~ -10 (like the shipped model)
ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "checkpoints" / "demo.pt"
IMAGE = np.zeros((48, 64, 3), np.uint8)
K = np.array([[60.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]])


def _rot(axis, deg: float) -> torch.Tensor:
    return so3.rotvec_to_matrix(torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
                                * math.radians(deg))


def _coeffs(centres: torch.Tensor, weights) -> torch.Tensor:
    """``(1, so3_dim)`` float32 log-density with peaks at ``centres`` ``(n, 3, 3)`` of relative heights ``weights``."""
    w = torch.as_tensor(weights, dtype=torch.float64)[:, None]
    return (KAPPA * (w * wigner.flat_wigner(centres.to(torch.float64), LMAX)).sum(0))[None].float()


_SIGNED_PERMUTATIONS = np.array([np.diag(s) @ np.eye(3)[list(p)] for p in itertools.permutations(range(3))
                                 for s in itertools.product((1, -1), repeat=3)])
CUBE_GROUP = torch.from_numpy(_SIGNED_PERMUTATIONS[np.linalg.det(_SIGNED_PERMUTATIONS) > 0])  # (24, 3, 3) float64


class SequenceModel:
    """Stands in for ``ImageToSphere``: ``predict`` returns the next frame's distribution (one per image)."""

    def __init__(self, frames: list[torch.Tensor]):
        self.frames, self.calls = list(frames), 0
        self.input_size = 16
        self.inference = InferenceSettings()

    def predict(self, images, target_level=None, log_prior=None):
        coeffs = self.frames[min(self.calls, len(self.frames) - 1)]
        self.calls += 1
        return SO3Distribution.from_fourier(coeffs.expand(images.shape[0], -1), LMAX, target_level=target_level,
                                            log_prior=log_prior)


def _run(frames, settings=None, dt=0.1, boxes=None, k=None):
    """Published modes ``(T, 3, 3)`` and the estimates of a synthetic sequence through ``PoseEstimator``."""
    est = PoseEstimator(SequenceModel(frames), settings or EstimatorSettings(num_samples=4))
    out = [est.estimate(IMAGE, k, boxes=boxes, stamp_s=i * dt).objects[0] for i in range(len(frames))]
    return torch.stack([torch.as_tensor(o.rotation) for o in out]), out


def _flips(modes: torch.Tensor, threshold_deg: float = 30.0) -> int:
    return int((so3.geodesic_distance(modes[:-1], modes[1:]) > math.radians(threshold_deg)).sum())


# ----------------------------------------------------------------------------- the prior's normalisation
@pytest.mark.parametrize("std_deg", [0.5, 5.0, 30.0, 120.0, 400.0])
def test_motion_noise_integrates_to_one(std_deg, dtype) -> None:
    """The slow, obviously right twin: the density times the Haar measure of the angle, pi (1 - cos a) da."""
    a = torch.linspace(0, math.pi, 100001, dtype=torch.float64)
    density = rotation_noise_log_density(a.to(dtype), math.radians(std_deg) ** 2).to(torch.float64).exp()
    total = torch.trapezoid(density * math.pi * (1 - torch.cos(a)), a)
    assert float(total) == pytest.approx(1.0, abs=1e-9 if dtype == torch.float64 else 5e-5)
    # small angles: the 3-D Gaussian of the rotation vector, times d^3 omega / dHaar = 8
    var = math.radians(std_deg) ** 2
    if std_deg <= 5:
        expected = math.log(8) - 1.5 * math.log(2 * math.pi * var)
        assert float(rotation_noise_log_density(torch.zeros((), dtype=dtype), var)) == pytest.approx(expected, abs=1e-4)


def test_prior_is_the_noise_mixed_with_the_outlier_weight(dtype, tol) -> None:
    """One particle: the prior at rotations equals log((1 - eps) k(angle) + eps / pi**2) of the plain kernel."""
    q0 = so3.matrix_to_quat(_rot([1, 2, 0], 30))
    post = CompactPosterior(q0[None], torch.zeros(1, dtype=torch.float64), torch.full((1,), 1e-4, dtype=torch.float64),
                            1.0)
    prior = DiffusedPrior.from_posteriors([post], [0.5], math.radians(20), 0.1, dtype=dtype)
    angles = torch.tensor([0.0, 1e-3, 0.05, 0.3, 1.0, 2.0, 3.1], dtype=torch.float64)
    R = so3.rotvec_to_matrix(torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64) * angles[:, None]) @ _rot([1, 2, 0], 30)
    var = math.radians(20) ** 2 * 0.5 + 1e-4
    kernel = rotation_noise_log_density(angles, var)
    expected = torch.logaddexp(kernel + math.log(0.9), torch.tensor(math.log(0.1) - so3.LOG_HAAR_VOLUME,
                                                                     dtype=torch.float64))
    got = prior.at_rotations(R.to(dtype)[None])[0].to(torch.float64)
    assert torch.allclose(got, expected, atol=1e-4 if dtype == torch.float32 else 1e-9), (got, expected)


def _posterior(n: int, seed: int, spread_level: int = 4) -> CompactPosterior:
    g = torch.Generator().manual_seed(seed)
    q = so3.matrix_to_quat(so3.random_rotations(n, generator=g, dtype=torch.float64))
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    spread = torch.full((n,), grids.resolution(spread_level) ** 2 / 12, dtype=torch.float64)
    return CompactPosterior(q, (w / w.sum()).log(), spread, 1.0)


@pytest.mark.parametrize("std_deg, level", [(20.0, 4), (60.0, 4), (8.0, 5)])
def test_prior_integrates_to_one_on_a_fine_grid(std_deg, level, dtype) -> None:
    prior = DiffusedPrior.from_posteriors([_posterior(5, 0)], [1.0], math.radians(std_deg), 0.05, dtype=dtype)
    n = grids.num_cells(level)
    log_p = prior.at_cells(level, torch.arange(n)[None])
    assert log_p.dtype == dtype
    total = float((log_p.to(torch.float64).exp() * so3.HAAR_VOLUME / n).sum())
    assert total == pytest.approx(1.0, abs=2e-4)
    # the negative control: the prior is not flat (a wrong normalisation of the kernel would show)
    assert float(log_p.max()) > -so3.LOG_HAAR_VOLUME + 0.5
    # its floor is the outlier weight's uniform density (reached far from the particles of a narrow prior)
    floor = math.log(0.05) - so3.LOG_HAAR_VOLUME
    assert float(log_p.min()) >= floor - 1e-5
    if std_deg <= 20:
        assert float(log_p.min()) == pytest.approx(floor, abs=1e-3)


def test_prior_at_cells_and_at_rotations_agree_and_pruning_is_exact(dtype, tol) -> None:
    post = _posterior(40, 1)
    prior = DiffusedPrior.from_posteriors([None, post], [0.0, 0.2], math.radians(10.0), 0.05, dtype=dtype)
    base = torch.arange(grids.num_cells(3)).expand(2, -1)
    pruned = prior.at_cells(3, base)  # the full coarse grid: cells far from every particle get the floor unevaluated
    assert torch.all(pruned[0] == 0)  # an inactive row is exactly 0
    dense = prior._mixture(grids.cell_quaternions(3, base[1], dtype=dtype), prior._kernel(1, 3))
    assert prior._kernel(1, 3).cutoff < math.pi / 2  # pruned indeed
    assert torch.allclose(pruned[1], dense, atol=2e-4)
    # at the particle level the cell value is the point value up to the cell's own spread
    idx = grids.cell_of(so3.quat_to_matrix(post.quaternions), 6)[None].expand(2, -1)
    at_cells = prior.at_cells(6, idx)[1]
    at_rot = prior.at_rotations(grids.cell_rotations(6, idx, dtype=torch.float64))[1]
    assert torch.allclose(at_cells, at_rot, atol=0.02)
    with pytest.raises(ValueError, match="outlier_weight"):
        DiffusedPrior.from_posteriors([post], [0.1], 0.1, 0.0)
    with pytest.raises(ValueError, match="elapsed"):
        DiffusedPrior.from_posteriors([post], [-1.0], 0.1, 0.05)


def test_an_inactive_prior_changes_nothing_and_log_prob_includes_an_active_one() -> None:
    coeffs = _coeffs(torch.stack([torch.eye(3, dtype=torch.float64), _rot([0, 0, 1], 90)]), [1.0, 1.0])
    plain = SO3Distribution.from_fourier(coeffs, LMAX)
    idle = DiffusedPrior.from_posteriors([None], [0.0], 0.1, 0.05)
    same = SO3Distribution.from_fourier(coeffs, LMAX, log_prior=idle)
    assert torch.equal(plain.log_mass, same.log_mass) and torch.equal(plain.cell_index, same.cell_index)
    post = CompactPosterior(so3.matrix_to_quat(_rot([0, 0, 1], 90))[None], torch.zeros(1, dtype=torch.float64),
                            torch.zeros(1, dtype=torch.float64), 1.0)
    prior = DiffusedPrior.from_posteriors([post], [0.1], math.radians(20), 0.05)
    dist = SO3Distribution.from_fourier(coeffs, LMAX, log_prior=prior)
    assert dist.log_prior is prior
    assert float(so3.geodesic_distance(dist.mode()[0].double(), _rot([0, 0, 1], 90))) < math.radians(2)
    assert float(so3.geodesic_distance(plain.mode()[0].double(), torch.eye(3, dtype=torch.float64))) < math.radians(2) \
        or float(so3.geodesic_distance(plain.mode()[0].double(), _rot([0, 0, 1], 90))) < math.radians(2)
    # log_prob = f + log prior - log_norm: the cells' log-density at fine cells, up to the cell averaging of the
    # prior (its variance grows by resolution**2 / 12: 0.7 % here, 0.05 nats 4 std away)
    fine = (dist.cell_level == dist.finest_level).nonzero()[:5, 0]
    R = dist.cell_rotations(fine)
    assert torch.allclose(dist.log_prob(R), dist.cell_log_density()[:, fine], atol=0.1)
    assert torch.allclose(dist.select([0]).log_prob(R), dist.log_prob(R))


# ----------------------------------------------------------------------------- the filter on sequences
def _alternating(centres: torch.Tensor, frames: int, bump: float = 0.02) -> list[torch.Tensor]:
    """Equal peaks at ``centres``; each frame another one (cycling, then random) is slightly higher."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(frames):
        w = torch.ones(len(centres), dtype=torch.float64)
        w[t % 2 if t < frames // 2 else int(torch.randint(len(centres), (1,), generator=g))] += bump
        out.append(_coeffs(centres, w))
    return out


@pytest.mark.parametrize("group", ["two", "cube"])
def test_equal_modes_flip_without_the_filter_and_not_with_it(group) -> None:
    if group == "two":
        centres = torch.stack([_rot([1, 2, 3], 40), _rot([1, 2, 3], 40) @ _rot([0, 0, 1], 90)])
    else:
        centres = _rot([1, 2, 3], 40) @ CUBE_GROUP
    frames = _alternating(centres, 16)
    off, _ = _run(frames, EstimatorSettings(num_samples=4, temporal_filter=False))
    on, estimates = _run(frames)
    assert _flips(off) >= 7  # the negative control: frame by frame the mode follows the higher peak
    assert _flips(on) == 0
    assert [o.filtered for o in estimates] == [False] + [True] * 15
    assert {o.track_id for o in estimates} == {"image"}
    # the filter alone keeps the branch too (no continuity rule), and continuity alone (a prior almost uniform)
    alone, _ = _run(frames, EstimatorSettings(num_samples=4, continuity_tie_nats=0.0))
    assert _flips(alone) == 0
    alone, _ = _run(frames, EstimatorSettings(num_samples=4, filter_outlier_weight=0.999))
    assert _flips(alone) == 0


def test_a_slowly_moving_mode_is_followed_without_lag() -> None:
    """A single peak turning at 10 deg/s, 10 Hz: the filtered mode stays within 2.5 deg of it (unfiltered: the
    cell resolution, 1.9 deg), at the default 45 deg/sqrt(s) and at a 4x smaller random walk."""
    truth = [_rot([1, 0.3, 0.2], 1.0 * t) @ _rot([0, 1, 0], 30) for t in range(30)]
    frames = [_coeffs(R[None], [1.0]) for R in truth]
    T = torch.stack(truth)
    for std in (45.0, 11.25):
        on, _ = _run(frames, EstimatorSettings(num_samples=4, filter_rotation_std_deg=std))
        lag = so3.geodesic_distance(on, T)
        assert float(lag.max()) < math.radians(2.5), (std, np.degrees(lag.numpy()).round(2))


def test_a_sudden_real_change_is_followed_within_a_few_frames() -> None:
    """A single peak that jumps by 60 deg (no symmetry): the filter follows within 3 frames (the outlier weight)."""
    before, after = _rot([0, 1, 0], 20), _rot([1, 1, 0], 60) @ _rot([0, 1, 0], 20)
    frames = [_coeffs(before[None], [1.0])] * 10 + [_coeffs(after[None], [1.0])] * 10
    for weight in (0.05, 0.001):
        on, _ = _run(frames, EstimatorSettings(num_samples=4, filter_outlier_weight=weight))
        err = np.degrees(so3.geodesic_distance(on[10:], after[None]).numpy())
        assert (err[3:] < 2.5).all(), (weight, err.round(1))
    # and a second peak of equal height appearing 60 deg away is not jumped to (the mode moves by the 3 deg the
    # overlapping kernels shift the peak)
    two = [_coeffs(before[None], [1.0])] * 5 + [_coeffs(torch.stack([before, after]), [1.0, 1.0])] * 5
    on, _ = _run(two)
    assert float(so3.geodesic_distance(on, before[None]).max()) < math.radians(5)


def test_tracks_reset_on_timeout_and_backward_stamps() -> None:
    centres = _rot([1, 2, 3], 40) @ CUBE_GROUP
    est = PoseEstimator(SequenceModel(_alternating(centres, 40)), EstimatorSettings(num_samples=4))
    stamps = [0.0, 0.1, 0.2, 2.0, 2.1, 1.0, 1.1, 1.2]
    frames = [est.estimate(IMAGE, stamp_s=t) for t in stamps]
    filtered = [f.objects[0].filtered for f in frames]
    assert filtered == [False, True, True, False, True, False, True, True]
    assert not frames[3].notes or "tracks reset" in frames[3].notes[0][1]  # a jump > track_timeout_s
    kinds = [note[0] for note in frames[5].notes]
    assert kinds == ["stamp"] and "before the previous frame" in frames[5].notes[0][1]  # a rosbag loop
    est.reset_tracks()
    assert est.tracks == [] and not est.estimate(IMAGE, stamp_s=1.3).objects[0].filtered
    # without a stamp nothing is tracked, and the tracks are left alone
    o = est.estimate(IMAGE).objects[0]
    assert o.track_id == "" and not o.filtered and len(est.tracks) == 1
    assert est.estimate(IMAGE, stamp_s=1.4).objects[0].filtered
    with pytest.raises(ValueError, match="stamp_s"):
        est.estimate(IMAGE, stamp_s=math.nan)


def test_a_repeated_frame_is_not_fused_twice() -> None:
    """The same image again (same stamp: a camera or a replay repeating a frame) gives the same estimate, built
    on the state before it; the next stamp goes on from there. Negative control: new stamps of that image do
    sharpen the posterior (each counts as a new observation)."""
    frame = _coeffs(_rot([1, 2, 3], 40)[None], [1.0])
    est = PoseEstimator(SequenceModel([frame] * 20), EstimatorSettings(num_samples=4))
    first = est.estimate(IMAGE, stamp_s=0.0).objects[0]
    second = est.estimate(IMAGE, stamp_s=0.1).objects[0]
    repeats = [est.estimate(IMAGE, stamp_s=0.1).objects[0] for _ in range(3)]
    for r in repeats:
        assert r.filtered and r.max_log_density == second.max_log_density
        np.testing.assert_array_equal(r.orientation, second.orientation)
        np.testing.assert_array_equal(r.covariance, second.covariance)
    assert second.max_log_density > first.max_log_density  # one prior fused
    later = [est.estimate(IMAGE, stamp_s=0.1 * k).objects[0].max_log_density for k in range(2, 6)]
    assert later[0] > second.max_log_density and later[-1] > later[0]  # new stamps keep sharpening
    # the first frame repeated: still no prior
    fresh = PoseEstimator(SequenceModel([frame] * 3), EstimatorSettings(num_samples=4))
    a, b = (fresh.estimate(IMAGE, stamp_s=5.0).objects[0] for _ in range(2))
    assert not a.filtered and not b.filtered and a.max_log_density == b.max_log_density


def test_boxes_are_tracked_by_id_or_by_nearest_centre() -> None:
    tracker = Tracker(timeout_s=1.0)
    a, b = Box((10.0, 10.0), (20.0, 20.0), id="cup"), Box((50.0, 10.0), (10.0, 10.0))
    tracks = tracker.associate([a, b, None, Box((0.0, 0.0), (5.0, 5.0), id="cup")], 0.0)
    assert [t.track_id if t else None for t in tracks] == ["cup", "#1", "image", None]  # a repeated id: untracked
    post = _posterior(1, 0)
    for t, box in zip(tracks[:3], (a, b, None), strict=True):
        tracker.update(t, 0.0, box, post, np.array([0.0, 0.0, 0.0, 1.0]))
    assert tracker.begin_frame(0.1) is None
    # the id-less box moved 8 px (gate: its longer side, 10 px): same track; a far one: a new track
    near, far = Box((58.0, 10.0), (10.0, 10.0)), Box((90.0, 40.0), (10.0, 10.0))
    tracks = tracker.associate([far, near, Box((30.0, 30.0), (4.0, 4.0), id="cup")], 0.1)
    assert [t.track_id for t in tracks] == ["#2", "#1", "cup"]
    assert tracks[1].posterior is post and tracks[0].posterior is None
    # not seen for longer than the timeout: dropped
    tracker.update(tracks[1], 0.1, near, post, np.array([0.0, 0.0, 0.0, 1.0]))
    tracker.begin_frame(1.05)
    assert sorted(t.track_id for t in tracker.tracks.values()) == ["#1"]
    assert "before the previous" in tracker.begin_frame(0.5)
    assert tracker.tracks == {}


def test_boxes_through_the_estimator_with_viewing_ray_corrections() -> None:
    """Two boxes off the image centre (different R_ray each): each track keeps its branch in the camera frame."""
    centres = _rot([1, 2, 3], 40) @ CUBE_GROUP
    boxes = [Box((12.0, 12.0), (16.0, 16.0), id="left"), Box((50.0, 30.0), (14.0, 14.0))]
    est = PoseEstimator(SequenceModel(_alternating(centres, 10)), EstimatorSettings(num_samples=4))
    frames = [est.estimate(IMAGE, K, boxes=boxes, stamp_s=0.1 * i) for i in range(10)]
    for j, name in enumerate(("left", "#1")):
        modes = torch.stack([torch.as_tensor(f.objects[j].rotation) for f in frames])
        assert {f.objects[j].track_id for f in frames} == {name}
        assert _flips(modes) == 0
        assert all(f.objects[j].filtered for f in frames[1:])
    # one peak, still: the prior, turned into each crop's frame, sits on it (a frame mix-up would pull the mode
    # by the ~20 deg between the crops' viewing rays and the optical axis)
    still = [_coeffs(_rot([1, 2, 3], 40)[None], [1.0])] * 6
    off, _ = _run(still, EstimatorSettings(num_samples=4, temporal_filter=False), boxes=boxes[:1], k=K)
    on, _ = _run(still, boxes=boxes[:1], k=K)
    assert float(so3.geodesic_distance(on, off).max()) < 1.01 * grids.resolution(5)


def test_continuity_in_the_summary_picks_the_peak_nearest_the_reference(dtype) -> None:
    A, B = _rot([1, 0, 0], 30), _rot([1, 0, 0], 30) @ _rot([0, 0, 1], 90)
    dist = SO3Distribution.from_fourier(_coeffs(torch.stack([A, B]), [1.02, 1.0]).to(dtype), LMAX)
    ref = so3.matrix_to_quat(B @ _rot([0, 1, 0], 5))[None].numpy()  # 5 deg off B
    plain = summarize(dist, num_samples=4)
    near_b = summarize(dist, num_samples=4, reference=ref, tie_nats=1.0)
    off = summarize(dist, num_samples=4, reference=ref, tie_nats=0.0)
    none = summarize(dist, num_samples=4, reference=np.full((1, 4), np.nan), tie_nats=1.0)

    def angle(q, R):
        return math.degrees(float(so3.geodesic_distance(so3.quat_to_matrix(torch.as_tensor(q[0])), R)))

    assert angle(plain.orientation, A) < 2 and angle(off.orientation, A) < 2 and angle(none.orientation, A) < 2
    assert angle(near_b.orientation, B) < 2  # a peak, not the cell nearest the reference (5 deg away)
    assert near_b.max_log_density[0] < plain.max_log_density[0]  # reported at the published mode
    with pytest.raises(ValueError, match="reference"):
        summarize(dist, reference=np.zeros((2, 4)), tie_nats=1.0)


def test_the_branch_switches_only_for_much_more_mass() -> None:
    pub, other = np.array([0.0, 0.0, 0.0, 1.0]), so3.matrix_to_quat(_rot([0, 0, 1], 90)).numpy()
    modes, radius = np.stack([other, pub]), math.radians(15)
    assert choose_branch(pub, 0.3, modes, np.array([0.5, 0.3]), radius, 1.0)[1] is False
    q, switched = choose_branch(pub, 0.1, modes, np.array([0.5, 0.1]), radius, 1.0)
    assert switched and np.allclose(q, other)


def test_compact_posterior_keeps_the_branch_and_its_mass() -> None:
    A, B = _rot([1, 0, 0], 30), _rot([1, 0, 0], 30) @ _rot([0, 0, 1], 90)
    dist = SO3Distribution.from_fourier(_coeffs(torch.stack([A, B]), [1.0, 1.0]), LMAX)
    (everywhere,) = compact_posteriors(dist)
    (branch,) = compact_posteriors(dist, centers=so3.matrix_to_quat(A)[None], radius=math.radians(15))
    assert len(everywhere) <= 256 and len(branch) <= 256
    assert 0.4 < branch.kept_mass < 0.55 < everywhere.kept_mass <= 1.0
    assert float(torch.logsumexp(branch.log_weight, 0)) == pytest.approx(0.0, abs=1e-9)
    angles = so3.geodesic_distance(so3.quat_to_matrix(branch.quaternions), A[None])
    assert float(angles.max()) < math.radians(16)


def test_settings_are_validated() -> None:
    for bad in (dict(filter_rotation_std_deg=0.0), dict(filter_outlier_weight=0.0), dict(filter_outlier_weight=1.0),
                dict(continuity_tie_nats=-1.0), dict(track_timeout_s=0.0), dict(track_timeout_s=math.inf),
                dict(temporal_filter="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EstimatorSettings(**bad)


# ----------------------------------------------------------------------------- the off-switch, the shipped model
def test_filter_off_is_the_untracked_estimator_exactly() -> None:
    from pose_core.model import ImageToSphere

    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=16, hidden_channels=4).eval()
    model.input_size = 32
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    boxes = [Box((20.0, 20.0), (20.0, 24.0), id="a"), Box((44.0, 30.0), (16.0, 16.0))]
    plain = PoseEstimator(model, EstimatorSettings(target_level=4, num_samples=5))
    off = PoseEstimator(model, EstimatorSettings(target_level=4, num_samples=5, temporal_filter=False))
    for i in range(3):
        a = plain.estimate(image, K, boxes=boxes).objects
        b = off.estimate(image, K, boxes=boxes, stamp_s=0.1 * i).objects
        for x, y in zip(a, b, strict=True):
            for name in ("orientation", "covariance", "samples", "modes", "mode_mass", "mode_log_density"):
                assert np.array_equal(getattr(x, name), getattr(y, name)), name
            assert x.entropy == y.entropy and y.track_id == "" and not y.filtered
    assert off.tracks == []


@pytest.mark.skipif(not TRAINED.is_file(), reason="no shipped checkpoint")
def test_shipped_model_on_a_rendered_turning_cube() -> None:
    """The demo trajectory (20 deg/s, 5 Hz, 3 s): the unfiltered mode flips between the cube's equal modes,
    the filtered one does not, and it is as close to the truth."""
    pytest.importorskip("moderngl")
    from pose_core import load_model
    from pose_core.data import Camera, Renderer, get_shape
    from pose_core.metrics import nearest_equivalent_error
    from pose_core.trajectory import rotation_at

    try:
        camera = Camera(width=128, height=128)
        renderer = Renderer(camera=camera)
    except Exception as exc:  # no EGL on this machine
        pytest.skip(f"cannot render: {exc}")
    shape = get_shape("cube")
    truth = [rotation_at(0.2 * i) for i in range(15)]
    images = [renderer.render(shape.mesh, R) for R in truth]
    renderer.close()
    model = load_model(TRAINED)
    results = {}
    for on in (False, True):
        est = PoseEstimator(model, EstimatorSettings(num_samples=4, temporal_filter=on))
        modes = torch.stack([torch.as_tensor(est.estimate(im, camera.K, stamp_s=0.2 * i).objects[0].rotation)
                             for i, im in enumerate(images)])
        eq = torch.stack([torch.as_tensor(shape.equivalent_rotations(R)) for R in truth])
        results[on] = (_flips(modes), float(nearest_equivalent_error(modes, eq).median()))
    assert results[False][0] >= 2 and results[True][0] == 0, results
    assert results[True][1] < results[False][1] + math.radians(1.0), results
