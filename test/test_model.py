"""ImageToSphere: forward/backward on CPU, predict, checkpoints (round trip and bad files)."""

import math

import pytest
import torch

from pose_core import ImageToSphere, SO3Distribution, grids, load_model, save_checkpoint, so3, wigner
from pose_core.model import _umask, read_checkpoint


class NotATensor:
    """An arbitrary pickled object, which weights-only loading must refuse."""


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)


def test_forward_backward_on_cpu(small_model):
    images = torch.rand(2, 3, 96, 96)
    coeffs = small_model(images)
    assert coeffs.shape == (2, wigner.so3_dim(6))
    loss = small_model.loss(images, so3.random_rotations(2))
    assert torch.isfinite(loss) and loss > 0
    small_model.zero_grad()
    loss.backward()
    grads = [p.grad for p in small_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    logits = small_model.grid_logits(coeffs)
    assert logits.shape == (2, grids.num_cells(3))


def test_predict_returns_a_refined_distribution(small_model):
    small_model.eval()
    d = small_model.predict(torch.rand(1, 3, 64, 64))
    assert isinstance(d, SO3Distribution) and d.is_band_limited
    assert d.finest_level == 5 and math.isclose(d.mode_resolution(), grids.resolution(5))
    assert d.mode().shape == (1, 3, 3)
    assert d.sample(4, generator=torch.Generator().manual_seed(0)).shape == (1, 4, 3, 3)
    # deterministic inference: same image, same distribution
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(small_model.predict(image).mode(), small_model.predict(image).mode())


def test_bad_images_raise_value_error(small_model):
    with pytest.raises(ValueError, match=r"\(2, 4, 32, 32\)"):
        small_model(torch.rand(2, 4, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        small_model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown encoder"):
        ImageToSphere(encoder="vgg")


def test_load_model_round_trip(small_model, tmp_path):
    path = save_checkpoint(small_model, tmp_path / "m.pt", meta={"note": "test"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # shareable like any file, not mkstemp's 0600
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
    model = load_model(path)
    assert not model.training
    assert read_checkpoint(path)["meta"] == {"note": "test"}
    images = torch.rand(2, 3, 64, 64)
    small_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), small_model(images))
    # load_model uses weights_only loading: a checkpoint carrying arbitrary objects is refused
    torch.save({"format": "x", "obj": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(tmp_path / "evil.pt")


def test_missing_or_corrupt_checkpoint_gives_clear_errors(small_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    good = save_checkpoint(small_model, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pose_distribution checkpoint"):
        load_model(tmp_path / "other.pt")
    payload = read_checkpoint(good)
    payload["config"]["hidden_channels"] = 7  # does not match the weights
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path / "mismatch.pt")


def test_checkpoint_carries_the_input_size_and_predict_resizes(small_model, tmp_path):
    from pose_core import preprocess

    small_model.eval()
    small_model.input_size = 48
    path = save_checkpoint(small_model, tmp_path / "sized.pt")
    model = load_model(path)
    assert model.input_size == 48 and read_checkpoint(path)["input"] == {"image_size": 48}
    big = torch.rand(2, 3, 150, 200)  # another size, not square: centred square, then resized
    want = model.predict(preprocess.resize(big, 48)).log_mass
    torch.testing.assert_close(model.predict(big).log_mass, want)
    u8 = (big * 255).round().to(torch.uint8)
    assert model.predict(u8).batch_size == 2  # uint8 is accepted and scaled
    # an older checkpoint without "input" gives it in its training config
    payload = read_checkpoint(path)
    del payload["input"]
    payload["meta"] = {"train_config": {"data": {"image_size": 64}}}
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").input_size == 64
    payload["meta"] = {}
    torch.save(payload, tmp_path / "unknown.pt")
    unknown = load_model(tmp_path / "unknown.pt")
    assert unknown.input_size is None  # predict uses images as given
    assert not torch.allclose(unknown.predict(big[:, :, :48, :48]).log_mass, model.predict(big).log_mass)
    small_model.input_size = None


def test_checkpoint_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_checkpoint(tmp_path)
