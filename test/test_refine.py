"""pose_core.refine: the feature splatting renderer, the NeMo score and the refinement.

Numeric checks in float32 and float64 with negative controls: the sparse renderer against a dense
brute-force twin, its gradients against finite differences, visibility of a hidden sheet, the score
ignoring an occluder (and a score without the per-pixel max, the control, not ignoring it), and a
refinement that recovers a known pose from a perturbed start on constructed feature maps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import so3
from pose_core.refine import (
    NeuralMesh,
    RefineSettings,
    canonical_intrinsics,
    map_intrinsics,
    nemo_grid,
    refine,
    refine_on_features,
    splat,
    vertex_visibility,
)
from pose_core.refine import render as rr


def _dense_twin(vertices, feats, R, t, K, h, w, sigma, opacity):
    """The module docstring's definition, evaluated on every (vertex, pixel) pair."""
    uv, z, front = rr.project(vertices, R, t, K)
    Kb = K.expand(R.shape[0], 3, 3) if K.ndim == 2 else K
    focal = torch.sqrt(Kb[:, 0, 0] * Kb[:, 1, 1])
    pts = rr.pixel_grid(h, w, vertices.dtype)
    s = focal[:, None] * sigma / z
    d2 = ((uv[:, :, None, :] - pts[None, None]) ** 2).sum(-1)
    a = opacity * torch.exp(-0.5 * d2 / (s * s)[..., None]) * front[..., None]
    order = torch.argsort(z, 1)
    a_s = torch.gather(a, 1, order[:, :, None].expand_as(a))
    lk = torch.log1p(-a_s)
    wt = torch.exp(torch.cumsum(lk, 1) - lk) * a_s
    F = torch.einsum("nvp,nvd->ndp", wt, feats[order]).reshape(R.shape[0], -1, h, w)
    return F, wt.sum(1).reshape(-1, h, w)


def _blob(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """An asymmetric blob of ``n`` surface points (an ellipsoid with a bump), radius <= 1."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    p = d * torch.tensor([1.0, 0.7, 0.5], dtype=torch.float64)
    p = p + 0.3 * torch.exp(-((d - torch.tensor([0.6, 0.6, 0.5], dtype=torch.float64)) ** 2).sum(1) * 4)[:, None] * d
    return (p / p.norm(dim=1).max()).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_splat_matches_dense_definition(dtype):
    V = _blob(200, dtype=dtype)
    feats = torch.randn(200, 5, dtype=dtype, generator=torch.Generator().manual_seed(1))
    R = so3.random_rotations(3, generator=torch.Generator().manual_seed(2), dtype=dtype)
    t = torch.tensor([[0.1, -0.2, 4.0], [0.0, 0.0, 3.5], [-0.3, 0.1, 5.0]], dtype=dtype)
    K = map_intrinsics(torch.tensor(canonical_intrinsics(96), dtype=dtype), 4)
    sigma = 0.12
    sp = splat(V, feats, R, t, K, (24, 24), sigma, 0.9)
    F, A = _dense_twin(V, feats, R, t, K, 24, 24, sigma, 0.9)
    assert sp.features.shape == (3, 5, 24, 24) and sp.coverage.shape == (3, 24, 24)
    assert float(A.max()) > 0.99  # the object covers pixels completely
    assert torch.allclose(sp.coverage, A, atol=2e-3)
    assert torch.allclose(sp.features, F, atol=2e-3 * float(feats.abs().max()) * 5)
    # negative control: truncating far tighter than the Gaussians are wide is visibly wrong
    short = splat(V, feats, R, t, K, (24, 24), sigma, 0.9, reach=0.5)
    assert (short.coverage - A).abs().max() > 0.05


def test_splat_gradients_match_finite_differences():
    dtype = torch.float64
    V = _blob(40, seed=3, dtype=dtype)
    feats = torch.randn(40, 3, dtype=dtype, generator=torch.Generator().manual_seed(4))
    R0 = so3.random_rotations(1, generator=torch.Generator().manual_seed(5), dtype=dtype)
    K = map_intrinsics(torch.tensor(canonical_intrinsics(64), dtype=dtype), 4)
    weights = torch.randn(1, 3, 16, 16, dtype=dtype, generator=torch.Generator().manual_seed(6))

    def f(params: torch.Tensor) -> torch.Tensor:
        R = so3.rotvec_to_matrix(params[:3])[None] @ R0
        t = (torch.tensor([0.0, 0.0, 4.0], dtype=dtype) + params[3:6])[None]
        sp = splat(V, feats, R, t, K, (16, 16), 0.15, 0.8)
        return (sp.features * weights).sum() + 3.0 * (sp.coverage * weights[:, 0]).sum()

    p = torch.tensor([0.01, -0.02, 0.015, 0.02, -0.01, 0.05], dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(f(p), p)
    eps = 1e-6
    fd = torch.stack([(f(p.detach() + eps * e) - f(p.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(6, dtype=dtype)])
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-7), (g, fd)
    assert g.abs().min() > 1e-4  # every parameter moves the render: the check is not vacuous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_sheet_is_not_seen(dtype):
    # two parallel square sheets facing the camera, 0.5 apart in depth; the far one must be hidden
    g = torch.linspace(-0.6, 0.6, 13, dtype=dtype)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    sheet = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.zeros(169, dtype=dtype)], 1)
    V = torch.cat([sheet + torch.tensor([0, 0, -0.25], dtype=dtype), sheet + torch.tensor([0, 0, 0.25], dtype=dtype)])
    feats = torch.cat([torch.tensor([[1.0, 0.0]], dtype=dtype).expand(169, 2),
                       torch.tensor([[0.0, 1.0]], dtype=dtype).expand(169, 2)])
    R, t = torch.eye(3, dtype=dtype)[None], torch.tensor([[0.0, 0.0, 4.0]], dtype=dtype)
    K = map_intrinsics(torch.tensor(canonical_intrinsics(96), dtype=dtype), 4)
    sigma = 0.1  # spacing 0.1: the sheet's Gaussians overlap into an opaque surface
    sp = splat(V, feats, R, t, K, (24, 24), sigma, 0.9)
    centre = sp.features[0, :, 9:15, 9:15]
    assert float(centre[0].min()) > 0.97 and float(centre[1].max()) < 0.03
    vis = vertex_visibility(V, R, t, K, sigma, 0.9)[0]
    inner = (sheet[:, 0].abs() < 0.45) & (sheet[:, 1].abs() < 0.45)
    assert float(vis[:169][inner].min()) > 0.9 and float(vis[169:][inner].max()) < 0.05
    # negative control: nearly transparent balls let the far sheet through
    thin = splat(V, feats, R, t, K, (24, 24), sigma, 0.05)
    assert float(thin.features[0, 1, 9:15, 9:15].min()) > 0.2 * float(thin.features[0, 0, 9:15, 9:15].max())


# ---------------------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def blob_model() -> NeuralMesh:
    V = _blob(400, seed=7, dtype=torch.float32)
    return NeuralMesh({"num_vertices": 400, "input_size": 96, "clutter": 4}, {"name": "blob"}, V).eval()


def _ideal_features(model: NeuralMesh, R: torch.Tensor, t: torch.Tensor, K_map: torch.Tensor, size: int,
                    dtype=torch.float32) -> torch.Tensor:
    """Feature maps ``(1, D, size, size)`` a perfect CNN would give: the mesh's features where the object is,
    the first clutter feature elsewhere."""
    with torch.no_grad():
        sp = model.render(R.to(dtype), t.to(dtype), K_map.to(dtype), (size, size))
        obj = torch.nn.functional.normalize(sp.features, dim=1)
        bg = model.unit_clutter()[0].to(dtype)[None, :, None, None].expand_as(obj)
        return torch.where((sp.coverage > 0.5)[:, None], obj, bg)


def _translations(dtype) -> torch.Tensor:
    shifts = torch.linspace(-0.5, 0.5, 11, dtype=dtype)
    return torch.stack([shifts, torch.zeros_like(shifts), torch.full_like(shifts, 4.0)], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_ignores_an_occluder(blob_model, dtype):
    m = blob_model.to(dtype)
    try:
        R = so3.random_rotations(1, generator=torch.Generator().manual_seed(8), dtype=dtype)
        t = torch.tensor([[0.0, 0.0, 4.0]], dtype=dtype)
        K_map = map_intrinsics(torch.tensor(canonical_intrinsics(96), dtype=dtype), 4)[None]
        feats = _ideal_features(m, R, t, K_map, 24, dtype)
        # the occluder: the left half of the image, features that are clutter (a second clutter vector)
        occ = feats.clone()
        occ[..., :12] = m.unit_clutter()[1].to(dtype)[None, :, None, None]
        T = _translations(dtype)  # candidate poses: the object slid left and right along x
        Rs = R[:, None].expand(1, len(T), 3, 3)
        clean = m.score(feats, m.clutter_similarity(feats), Rs, T[None], K_map)[0]
        occluded = m.score(occ, m.clutter_similarity(occ), Rs, T[None], K_map)[0]
        assert int(clean.argmax()) == 5 and int(occluded.argmax()) == 5  # the truth, with and without
        assert float(occluded[5].detach()) < float(clean[5].detach()) - 0.02  # the occluder did hide part of the object
        # at the occluder's pixels each pose's term is exactly 0: they neither pull nor push the pose
        c = m.clutter_similarity(occ)
        terms = m.score_map(occ, c, Rs, T[None], K_map)[0]  # (11, 24, 24)
        assert float(terms[..., :12].abs().max()) == 0.0
        assert float(terms[..., 12:].max()) > 0.1
        # control: the same terms without the per-pixel max penalise covering the occluder, pose by pose
        with torch.no_grad():
            sp = m.render(Rs[0], T, K_map[0], (24, 24))
        no_max = torch.einsum("dhw,ndhw->nhw", occ[0], sp.features) - sp.coverage * c
        on_occluder = no_max[..., :12].sum((-2, -1))  # (11,)
        assert float(on_occluder.max()) < -1.0 and float(on_occluder.max() - on_occluder.min()) > 1.0
    finally:
        blob_model.float()


def test_refinement_recovers_a_known_pose(blob_model):
    m = blob_model
    R = so3.random_rotations(2, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([[0.0, 0.0, 4.0], [0.1, -0.1, 4.2]])
    K_map = map_intrinsics(torch.tensor(canonical_intrinsics(96), dtype=torch.float32), 4).expand(2, 3, 3)
    feats = torch.cat([_ideal_features(m, R[i : i + 1], t[i : i + 1], K_map[:1], 24) for i in range(2)])
    g = torch.Generator().manual_seed(10)
    axis = torch.nn.functional.normalize(torch.randn(2, 3, generator=g), dim=1)
    start = so3.rotvec_to_matrix(axis * math.radians(20)) @ R
    settings = RefineSettings(steps=60, lr=0.05, decay_every=30, lr_decay=0.3)
    res = refine_on_features(m, feats, K_map, start[:, None], translation=torch.tensor([0.0, 0.0, 4.0]),
                             settings=settings)
    before = so3.geodesic_distance(start, R)
    after = so3.geodesic_distance(res.rotation, R)
    assert torch.all(before > math.radians(19))
    assert torch.all(after < math.radians(3)), torch.rad2deg(after)
    assert float((res.translation - t).norm(dim=1).max()) < 0.15
    assert res.iterations == 60 * 2 and res.evaluations == 60 * 2 + 2
    # negative control: no steps, no recovery
    res0 = refine_on_features(m, feats, K_map, start[:, None], settings=RefineSettings(steps=0))
    assert torch.allclose(res0.rotation, start, atol=1e-6)


def test_grid_init_and_result_shapes(blob_model):
    grid = nemo_grid()
    assert grid.shape == (144, 3, 3)
    assert torch.allclose(grid @ grid.transpose(1, 2), torch.eye(3).expand(144, 3, 3), atol=1e-5)
    d = so3.geodesic_distance(grid[:, None], grid[None])
    assert float(d[~torch.eye(144, dtype=torch.bool)].min()) > math.radians(10)  # 144 distinct poses
    img = torch.rand(3, 96, 96)
    K = canonical_intrinsics(96)
    res = refine(blob_model, img, K, so3.random_rotations(3, generator=torch.Generator().manual_seed(0)),
                 settings=RefineSettings(init="both", steps=2))
    assert res.rotations.shape == (1, 4, 3, 3) and res.scores.shape == (1, 4)
    assert res.evaluations == 144 + 2 * 4 + 4 and res.iterations == 8
    assert torch.allclose(res.log_weights.exp().sum(1), torch.ones(1), atol=1e-5)
    for bad in (torch.rand(3, 96, 80), torch.full((3, 96, 96), float("nan"))):
        with pytest.raises(ValueError):
            refine(blob_model, bad, K, torch.eye(3)[None])
    with pytest.raises(ValueError):
        RefineSettings(init="everything")


def test_refine_reweights_a_distribution(blob_model):
    from pose_core.distribution import SO3Distribution

    m = blob_model
    R = so3.random_rotations(1, generator=torch.Generator().manual_seed(11))
    K_map = map_intrinsics(torch.tensor(canonical_intrinsics(96), dtype=torch.float32), 4)[None]
    feats = _ideal_features(m, R, torch.tensor([[0.0, 0.0, 4.0]]), K_map, 24)
    # a two-mode distribution on the level-2 grid: half its mass about the truth, half about a wrong pose
    from pose_core import grids

    cells = grids.so3_healpix_grid(2)  # (4608, 3, 3)
    wrong = so3.rotvec_to_matrix(torch.tensor([1.5, 0.0, 0.0])) @ R[0]
    logits = torch.full((len(cells),), -30.0)
    for centre in (R[0], wrong):
        near = so3.geodesic_distance(cells, centre.expand_as(cells)) < math.radians(12)
        logits[near] = 0.0
    dist = SO3Distribution.from_grid_logits(logits[None], level=2)
    res = refine_on_features(m, feats, K_map, dist, settings=RefineSettings(steps=5, num_samples=256),
                             generator=torch.Generator().manual_seed(12))
    assert res.samples.shape == (1, 256, 3, 3) and res.sample_weights.shape == (1, 256)
    err = so3.geodesic_distance(res.samples[0], R[0].expand(256, 3, 3))
    w = res.sample_weights[0]
    assert abs(float(w.sum()) - 1) < 1e-5
    right = (err < math.radians(25)).float()
    assert 0.2 < float(right.mean()) < 0.8  # the prior: about half
    assert float((w * right).sum()) > 0.95  # re-weighted: the render-and-compare likelihood picks the truth
    assert torch.allclose(res.prior_sample_weights, torch.full((1, 256), 1 / 256))
    assert float(so3.geodesic_distance(res.rotation[0], R[0])) < math.radians(10)


def test_neural_mesh_checkpoint_round_trip(tmp_path, blob_model):
    from pose_core.model import load_model, save_checkpoint

    path = save_checkpoint(blob_model, tmp_path / "nm.pt")
    back = load_model(path)
    assert isinstance(back, NeuralMesh) and back.object.name == "blob"
    for k, v in blob_model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_contrastive_loss_trains(blob_model):
    """A few steps of the contrastive loss on one constructed image lower it (and every part is finite)."""
    m = NeuralMesh({"num_vertices": 400, "input_size": 64, "clutter": 4, "background_samples": 16}, {"name": "b"},
                   blob_model.vertices.clone())
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    K = torch.tensor(canonical_intrinsics(64), dtype=torch.float32).expand(2, 3, 3)
    R = so3.random_rotations(2, generator=torch.Generator().manual_seed(14))
    t = torch.tensor([[0.0, 0.0, 4.0]]).expand(2, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        loss, stats = m(img, K, R, t, generator=torch.Generator().manual_seed(step))
        assert all(np.isfinite(float(v)) for v in stats.values()) and float(stats["visible"]) > 50
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_pipeline_refine_option(blob_model):
    """``EstimatorSettings(refine=True)``: the published mode is the refined hypothesis of highest weight (in the
    camera frame, viewing-ray corrected), the modes are the hypotheses, the refinement is timed; off: untouched."""
    from pose_core.model import ImageToSphere
    from pose_core.pipeline import Box, EstimatorSettings, PoseEstimator

    torch.manual_seed(0)
    i2s = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4).eval()
    i2s.input_size = 64
    rgb = np.random.default_rng(0).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    K = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])
    boxes = [Box((40.0, 60.0), (50.0, 50.0)), Box((110.0, 50.0), (40.0, 60.0))]
    settings = EstimatorSettings(num_samples=16, target_level=3, temporal_filter=False)
    plain = PoseEstimator(i2s, settings, seed=1).estimate(rgb, K, boxes=boxes)
    assert "refine" not in plain.timings_ms
    on = EstimatorSettings(num_samples=16, target_level=3, temporal_filter=False, refine=True, refine_modes=3,
                           refine_steps=2)
    missing = PoseEstimator(i2s, on, seed=1).estimate(rgb, K, boxes=boxes)
    assert any(kind == "refine" for kind, _ in missing.notes)
    est = PoseEstimator(i2s, on, seed=1, refiner=blob_model)
    frame = est.estimate(rgb, K, boxes=boxes)
    assert frame.timings_ms["refine"] > 0 and len(frame.objects) == 2
    for o, p in zip(frame.objects, plain.objects, strict=True):
        assert o.modes.shape == (3, 4) and np.allclose(np.linalg.norm(o.modes, axis=1), 1)
        assert np.allclose(o.orientation, o.modes[0]) or np.allclose(o.orientation, -o.modes[0])
        assert abs(o.sample_weights.sum() - 1) < 1e-5 and o.samples.shape == (16, 4)
        assert np.all(np.linalg.eigvalsh(o.covariance[3:, 3:]) >= -1e-12)
        assert o.mode_mass.sum() == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(o.mode_mass) <= 1e-9)
        assert o.entropy == p.entropy  # the distribution's, unchanged
    with pytest.raises(ValueError):
        EstimatorSettings(refine_modes=0)


def test_with_refinement_puts_hypotheses_in_the_camera_frame():
    from pose_core.distribution import SO3Distribution
    from pose_core.refine import RefineResult
    from pose_core.summary import summarize, with_refinement

    dist = SO3Distribution.from_grid_logits(torch.randn(2, 72, generator=torch.Generator().manual_seed(0)), level=0)
    Rc = so3.random_rotations(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    summary = summarize(dist, Rc, num_samples=8, generator=torch.Generator().manual_seed(2))
    hyps = so3.random_rotations(6, generator=torch.Generator().manual_seed(3)).reshape(2, 3, 3, 3)
    log_w = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]), dim=1)
    samples = so3.random_rotations(10, generator=torch.Generator().manual_seed(4)).reshape(2, 5, 3, 3)
    sw = torch.softmax(torch.randn(2, 5, generator=torch.Generator().manual_seed(5)), dim=1)
    res = RefineResult(rotations=hyps, translations=torch.zeros(2, 3, 3), scores=torch.zeros(2, 3), log_weights=log_w,
                       initial_rotations=hyps, rotation=hyps[:, 0], translation=torch.zeros(2, 3),
                       score=torch.zeros(2), samples=samples, sample_weights=sw, prior_sample_weights=sw)
    out = with_refinement(summary, res, dist, Rc)
    best = torch.stack([hyps[0, 1], hyps[1, 0]]).double()  # the highest weights
    R_out = so3.quat_to_matrix(torch.as_tensor(out.orientation))
    assert torch.allclose(R_out, Rc @ best, atol=1e-6)
    assert np.allclose(out.mode_mass[0], np.exp(log_w[0].numpy())[[1, 2, 0]], atol=1e-6)
    assert np.allclose(out.sample_weights, sw.numpy()) and out.samples.shape == (2, 5, 4)
    R_s = so3.quat_to_matrix(torch.as_tensor(out.samples))
    assert torch.allclose(R_s, Rc[:, None] @ samples.double(), atol=1e-6)
    # covariance: the weighted second moment about the new mode, recomputed here by hand
    omega = so3.matrix_to_rotvec(R_s @ R_out[:, None].transpose(-1, -2))
    cov = torch.einsum("bn,bni,bnj->bij", sw.double(), omega, omega)
    assert np.allclose(out.covariance, cov.numpy(), atol=1e-9)
    assert np.array_equal(out.entropy, summary.entropy)
