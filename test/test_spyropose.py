"""SpyroPose SE(3) model: keypoint projection, the importance-sampled training loss, inference, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pose_core import grids, so3
from pose_core import translation_grid as tgrid
from pose_core.distributions import SE3Distribution
from pose_core.model import load_model, save_checkpoint
from pose_core.models.spyropose import (
    ObjectModel,
    SpyroPose,
    SpyroPoseConfig,
    farthest_points,
    project_keypoints,
    propose_children,
)

SMALL = dict(feature_dim=8, decoder_dim=16, num_keypoints=8, hidden=32, levels=2, top_k=4, train_samples=15,
             input_size=64)


def _model(seed: int = 0, **changes) -> SpyroPose:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    kp = farthest_points(rng.normal(size=(200, 3)) * 0.05, changes.get("num_keypoints", SMALL["num_keypoints"]))
    return SpyroPose(SpyroPoseConfig(**{**SMALL, **changes}), ObjectModel(radius_m=0.075, apparent_size_m=0.1), kp)


def _crop_K(size: int, radius: float = 0.075, z: float = 1.0, padding: float = 1.1) -> torch.Tensor:
    f = size * z / (2 * padding * radius)  # the object's bounding sphere fills the crop / padding
    c = (size - 1) / 2
    return torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_farthest_points_spread_and_deterministic():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3))
    a, b = farthest_points(pts, 16), farthest_points(pts, 16)
    np.testing.assert_array_equal(a, b)
    d = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(16) * 1e9
    # farthest-point sampling keeps the chosen points apart; the first 16 points of the cloud do not
    first = pts[:16]
    d_first = np.linalg.norm(first[:, None] - first[None], axis=-1) + np.eye(16) * 1e9
    assert d.min() > d_first.min()
    with pytest.raises(ValueError, match="distinct points"):
        farthest_points(pts[:3], 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_keypoints_matches_pinhole_and_samples_the_right_pixel(dtype):
    size = 32
    K = _crop_K(size).to(dtype)[None]
    R = so3.random_rotations(5, generator=torch.Generator().manual_seed(1), dtype=dtype)[None]  # (1, 5, 3, 3)
    t = torch.tensor([0.01, -0.02, 1.0], dtype=dtype).expand(1, 5, 3)
    kp = torch.tensor([[0.03, 0.0, 0.0], [0.0, -0.04, 0.02], [0.0, 0.0, 0.0]], dtype=dtype)
    g = project_keypoints(R, t, kp, K, size)  # (1, 5, 3, 2)
    p = torch.einsum("mij,pj->mpi", R[0], kp) + t[0][:, None]
    uv = (p @ K[0].T)[..., :2] / p[..., 2:3]
    torch.testing.assert_close(((g[0] + 1) * size / 2 - 0.5), uv)
    # a feature map holding each pixel's own (u, v) gives back the projected position
    u, v = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="xy")
    fmap = torch.stack((u, v))[None]
    sampled = F.grid_sample(fmap, g, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)  # (5, 3, 2)
    torch.testing.assert_close(sampled, uv, atol=1e-4, rtol=0)
    # negative control: the transpose of K (a wrong convention) lands elsewhere
    wrong = project_keypoints(R, t, kp, K.transpose(1, 2), size)
    assert not torch.allclose(wrong, g, atol=1e-2)
    behind = project_keypoints(R[:, :1], -t[:, :1], kp, K, size)
    assert (behind == 4.0).all()


def test_proposal_log_q_is_the_sampling_probability():
    """The importance estimate sum exp(s)/q over draws is unbiased for the normaliser of all level-1 cells
    (576 * 64 of them): so log q, including cells reachable through repeated candidates, is right."""
    gen = torch.Generator().manual_seed(0)
    n_t = tgrid.num_cells(1)
    scores = torch.randn(grids.num_cells(1) * n_t, generator=gen, dtype=torch.float64) * 2.0
    exact = torch.logsumexp(scores, 0)
    # level-0 candidates with repeats and a peaked weight
    cand_rot = torch.tensor([[3, 3, 10, 40, 71, 3]])
    cand_trans = torch.tensor([[1, 1, 0, 7, 4, 1]])
    log_w = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 0.2]], dtype=torch.float64), 1)
    estimates = []
    for _ in range(40):
        rot, trans, log_q, _ = propose_children(cand_rot, cand_trans, log_w, 0, 4000, 0.25, generator=gen)
        s = scores[rot * n_t + trans]
        estimates.append(torch.logsumexp(s - log_q, 1) - math.log(4000))
    # the proposal only covers the candidates' children: compare with the normaliser over those
    parents = torch.unique(cand_rot * tgrid.num_cells(0) + cand_trans)
    kids = []
    for key in parents.tolist():
        r, tr = divmod(key, tgrid.num_cells(0))
        cr = grids.children(torch.tensor([r]), 0)[0]
        ct = tgrid.children(torch.tensor([tr]), 0)[0]
        kids.append((cr[:, None] * n_t + ct[None]).reshape(-1))
    covered = torch.logsumexp(scores[torch.cat(kids)], 0)
    mean_est = torch.logsumexp(torch.cat(estimates), 0) - math.log(len(estimates))
    assert abs(float(mean_est - covered)) < 0.05
    assert float(covered) < float(exact)  # (the rest of SO(3) x the box is not proposed)
    # negative control: ignoring the repeated candidates (log q of one position only) is biased
    mix = torch.logaddexp(log_w + math.log(0.75), torch.full_like(log_w, math.log(0.25 / 6)))
    biased = []
    for _ in range(40):
        parents_i = torch.multinomial(mix.exp(), 4000, replacement=True, generator=gen)
        child = torch.randint(0, 64, parents_i.shape, generator=gen)
        r = torch.gather(grids.children(torch.gather(cand_rot, 1, parents_i), 0), -1, (child // 8)[..., None])[..., 0]
        tr = torch.gather(tgrid.children(torch.gather(cand_trans, 1, parents_i), 0), -1, (child % 8)[..., None])[..., 0]
        lq = torch.gather(mix, 1, parents_i) - math.log(64)
        biased.append(torch.logsumexp(scores[r * n_t + tr] - lq, 1) - math.log(4000))
    mean_biased = torch.logsumexp(torch.cat(biased), 0) - math.log(len(biased))
    assert abs(float(mean_biased - covered)) > 0.1


def test_training_loss_is_finite_and_overfits_two_crops():
    model = _model(levels=3)
    K = _crop_K(64).float().expand(2, 3, 3).clone()
    t_hat = torch.tensor([[0.02, 0.0, 1.0], [-0.03, 0.01, 0.8]])
    R = so3.random_rotations(2, generator=torch.Generator().manual_seed(3))
    t = t_hat * torch.tensor([[1.0, 1.0, 1.05], [1.0, 1.0, 0.95]])
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, stats = model(images, K, t_hat, R, t)
        assert torch.isfinite(loss) and float(stats["inside"]) == 1.0
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    assert set(stats) == {"inside", "loss_level0", "loss_level1", "loss_level2"}
    # a truth outside the translation box is left out of the loss, and said so
    far = t * torch.tensor([1.0, 1.0, 3.0])
    _, stats = model(images, K, t_hat, R, torch.stack((t[0], far[1])))
    assert float(stats["inside"]) == 0.5


def test_predict_gives_a_normalised_se3_distribution_in_the_camera_frame():
    model = _model().eval()
    K = _crop_K(64).expand(3, 3, 3)
    t_hat = torch.tensor([[0.1, -0.05, 0.9], [0.0, 0.0, 0.5], [-0.2, 0.1, 1.4]], dtype=torch.float64)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dist = model.predict(images, K, t_hat)
    assert isinstance(dist, SE3Distribution) and dist.batch_size == 3 and dist.log_mass.dtype == torch.float64
    torch.testing.assert_close(dist.mass().sum(1), torch.ones(3, dtype=torch.float64))
    R, t = dist.mode()
    # the mode lies in each row's translation box around its own guess
    xi = tgrid.t_to_xi(model.frame(t_hat), t)
    assert (xi.abs() <= 1).all()
    # uint8 images and another crop size (K scaled with it) are accepted
    big = torch.nn.functional.interpolate(images, size=96, mode="bilinear", align_corners=False)
    K96 = _crop_K(96).expand(3, 3, 3)
    d96 = model.predict((big * 255).round().to(torch.uint8), K96, t_hat)
    assert d96.batch_size == 3
    with pytest.raises(ValueError, match="one K and t_hat per image"):
        model.predict(images, K[:2], t_hat)
    with pytest.raises(ValueError, match="z > 0"):
        model.predict(images, K, -t_hat)


def test_checkpoint_round_trip_through_load_model(tmp_path):
    model = _model().eval()
    model.temperature = 1.7
    path = save_checkpoint(model, tmp_path / "se3.pt", meta={"note": "test"})
    loaded = load_model(path)
    assert isinstance(loaded, SpyroPose) and loaded.pose_space == "se3" and not loaded.training
    assert loaded.temperature == 1.7 and loaded.object == model.object and loaded.input_size == 64
    torch.testing.assert_close(loaded.keypoints, model.keypoints)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    K, t_hat = _crop_K(64)[None], torch.tensor([[0.0, 0.0, 1.0]])
    a, b = model.predict(images, K, t_hat), loaded.predict(images, K, t_hat)
    torch.testing.assert_close(a.log_mass, b.log_mass)
    payload = torch.load(path, weights_only=True)
    payload["kind"] = "something_else"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown kind"):
        load_model(tmp_path / "bad.pt")
    del payload["kind"], payload["object"]  # an Image2Sphere checkpoint's shape with SpyroPose weights
    torch.save(payload, tmp_path / "worse.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path / "worse.pt")


def test_config_and_object_validation():
    with pytest.raises(ValueError, match="levels"):
        SpyroPoseConfig(levels=0)
    with pytest.raises(ValueError, match="proposal_uniform"):
        SpyroPoseConfig(proposal_uniform=1.5)
    with pytest.raises(ValueError, match="radius_m"):
        ObjectModel(radius_m=0.0)
    with pytest.raises(ValueError, match="keypoints"):
        SpyroPose(SpyroPoseConfig(**SMALL), ObjectModel(), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="torch only"):
        _model().use_backend("onnxruntime")
