"""DPM features (Baranchuk et al. 2022): extraction shapes and determinism, the label-efficient probe, label-only CV."""
from __future__ import annotations

import pytest
import torch

from sciddpm.domains.images.backbone import UNet
from sciddpm.domains.images.features import (FeatureProbe, cross_val_accuracy, decoder_block_count,
                                             extract_features, middle_blocks, pixel_features, probe_accuracy,
                                             probe_predict, sample_labelled, standardisation, stratified_folds,
                                             train_probe)
from sciddpm.schedules import LinearSchedule
from tests.domains.images.common import LINEAR_1000, TINY_UNET

TINY = TINY_UNET



@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    return UNet(schedule=LINEAR_1000, **TINY, zero_init=False).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand((5, 1, 28, 28), generator=torch.Generator().manual_seed(1)) * 2 - 1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_block_helpers(net):
    assert decoder_block_count(net) == 4  # (1 res + 1 extra) blocks per level, 2 levels
    assert middle_blocks(4) == (1, 2)
    assert middle_blocks(9) == (2, 3, 4, 5)
    assert middle_blocks(18) == tuple(range(5, 13))  # Baranchuk's blocks 5..12 of 18
    assert middle_blocks(1) == (0,)
    with pytest.raises(ValueError, match="num_blocks"):
        middle_blocks(0)


def test_shapes_both_pool_modes(net, images):
    sch = LinearSchedule(1000)
    _, feats = net(images, torch.full((5,), 10.0), return_features=True)
    chans = [f.shape[1] for f in feats]
    assert chans == [16, 16, 8, 8]
    blocks, times = [0, 3], [10, 250, 500]
    mean = extract_features(net, sch, images, times, blocks, generator=_gen(), pool="mean", batch_size=2)
    pix = extract_features(net, sch, images, times, blocks, generator=_gen(), pool="pixel", batch_size=2)
    width = chans[0] + chans[3]
    assert mean.shape == (5, len(times) * width) and mean.dtype == torch.float32
    assert pix.shape == (5, len(times) * width, 28, 28)
    # bilinear ×2 upsampling (align_corners=False, edge clamped) preserves the spatial mean exactly, so the
    # globally pooled features are the pixel features averaged over pixels, block 0 (14×14) included.
    torch.testing.assert_close(pix.mean(dim=(2, 3)), mean, atol=1e-5, rtol=1e-5)
    # one block, one t: exactly the pooled decoder output at x_t = α x0 + σ ε with ε drawn once on the device
    eps = torch.randn(images.shape, generator=_gen(3))
    a, s = float(sch.alpha(250)), float(sch.sigma(250))
    _, ref = net(a * images + s * eps, torch.full((5,), 250.0), return_features=True)
    one = extract_features(net, sch, images, [250], [2], generator=_gen(3))
    torch.testing.assert_close(one, ref[2].mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_deterministic_and_batch_independent(net, images):
    sch = LinearSchedule(1000)
    a = extract_features(net, sch, images, [50, 150], [1, 2], generator=_gen(7), batch_size=5)
    b = extract_features(net, sch, images, [50, 150], [1, 2], generator=_gen(7), batch_size=5)
    c = extract_features(net, sch, images, [50, 150], [1, 2], generator=_gen(7), batch_size=2)
    d = extract_features(net, sch, images, [50, 150], [1, 2], generator=_gen(8), batch_size=5)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)  # ε drawn once for all of x0, not per batch
    assert (a - d).abs().max() > 1e-3  # another ε draw gives other features


def test_features_depend_on_t_and_concatenate_t_major(net, images):
    sch = LinearSchedule(1000)
    both = extract_features(net, sch, images, [10, 900], [2], generator=_gen(0))
    early = extract_features(net, sch, images, [10], [2], generator=_gen(0))
    late = extract_features(net, sch, images, [900], [2], generator=_gen(0))
    torch.testing.assert_close(both, torch.cat([early, late], dim=1), atol=1e-6, rtol=1e-6)
    assert (early - late).abs().mean() > 1e-2 * early.abs().mean()


def test_eval_mode_used_and_training_mode_restored(images):
    torch.manual_seed(0)
    drop = UNet(schedule=LINEAR_1000, **{**TINY, "dropout": 0.5}, zero_init=False).train()
    sch = LinearSchedule(1000)
    a = extract_features(drop, sch, images, [50], [1], generator=_gen(0))
    b = extract_features(drop, sch, images, [50], [1], generator=_gen(0))
    assert torch.equal(a, b) and drop.training  # dropout off during extraction, mode restored afterwards


def test_bad_inputs(net, images):
    sch = LinearSchedule(1000)
    with pytest.raises(ValueError, match="blocks"):
        extract_features(net, sch, images, [50], [4], generator=_gen())
    with pytest.raises(ValueError, match="blocks"):
        extract_features(net, sch, images, [50], [-1], generator=_gen())
    with pytest.raises(ValueError, match="blocks"):
        extract_features(net, sch, images, [50], [], generator=_gen())
    with pytest.raises(ValueError, match="times"):
        extract_features(net, sch, images, [], [1], generator=_gen())
    with pytest.raises(ValueError, match="times"):
        extract_features(net, sch, images, [1001], [1], generator=_gen())
    with pytest.raises(ValueError, match="pool"):
        extract_features(net, sch, images, [50], [1], generator=_gen(), pool="max")
    with pytest.raises(ValueError, match="x0"):
        extract_features(net, sch, images[0], [50], [1], generator=_gen())
    with pytest.raises(ValueError, match="decoder"):
        extract_features(torch.nn.Linear(2, 2), sch, images, [50], [0], generator=_gen())
    with pytest.raises(ValueError, match="x0"):
        pixel_features(torch.zeros(2))


def test_pixel_features(images):
    f = pixel_features(images)
    assert f.shape == (5, 784) and torch.equal(f[1], images[1].flatten())
    assert pixel_features((images * 127).to(torch.uint8)[:, 0]).dtype == torch.float32


def test_standardisation_uses_only_the_labelled_set():
    g = _gen(0)
    labelled = torch.randn((30, 4), generator=g) * torch.tensor([1.0, 2.0, 3.0, 0.0]) + 5.0
    labels = torch.arange(30) % 3
    probe = train_probe(labelled, labels, hidden=8, epochs=2, lr=1e-2, weight_decay=0.0, seed=0)
    mean, std = standardisation(labelled)
    torch.testing.assert_close(probe.mean, labelled.mean(0))
    torch.testing.assert_close(probe.std[:3], labelled[:, :3].std(0, unbiased=False))
    assert probe.std[3] == 1.0 and torch.equal(probe.std, std) and torch.equal(probe.mean, mean)  # constant dim: s=1
    # test-time features far from the labelled set do not change the probe's statistics
    far = torch.randn((100, 4), generator=g) * 50 - 20
    before = probe.mean.clone()
    probe_accuracy(probe, far, torch.zeros(100, dtype=torch.long))
    assert torch.equal(probe.mean, before)


@pytest.mark.parametrize("hidden", [0, 16])
def test_probe_fits_separable_toy_set(hidden):
    g = _gen(1)
    centres = torch.randn((4, 6), generator=g) * 6
    labels = torch.arange(80) % 4
    x = centres[labels] + torch.randn((80, 6), generator=g)
    probe = train_probe(x, labels, hidden=hidden, epochs=150, lr=1e-2, weight_decay=1e-2, seed=0)
    assert isinstance(probe, FeatureProbe) and not probe.training
    assert probe_accuracy(probe, x, labels) == 1.0
    again = train_probe(x, labels, hidden=hidden, epochs=150, lr=1e-2, weight_decay=1e-2, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(probe.parameters(), again.parameters()))  # seeded init


def test_pixelwise_probe_and_minibatches():
    g = _gen(2)
    feats = torch.randn((3, 4, 6, 6), generator=g)
    labels = (feats[:, 1] > 0).long()  # segmentation: class of a pixel = sign of channel 1
    probe = train_probe(feats, labels, hidden=8, epochs=60, lr=2e-2, weight_decay=0.0, seed=0, batch_size=32)
    assert probe_predict(probe, feats).shape == (3, 6, 6)
    assert probe_accuracy(probe, feats, labels) == 1.0
    with pytest.raises(ValueError, match="labels"):
        train_probe(feats, labels[:, 0], hidden=8, epochs=1, lr=1e-2, weight_decay=0.0, seed=0)


def test_probe_bad_inputs():
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    with pytest.raises(ValueError, match="epochs"):
        train_probe(x, y, hidden=4, epochs=0, lr=1e-2, weight_decay=0.0, seed=0)
    with pytest.raises(ValueError, match="labels"):
        train_probe(x, y, hidden=4, epochs=1, lr=1e-2, weight_decay=0.0, seed=0, num_classes=1)
    with pytest.raises(ValueError, match="features"):
        train_probe(x, y[:5], hidden=4, epochs=1, lr=1e-2, weight_decay=0.0, seed=0)


def test_label_sampling_and_stratified_cv():
    labels = torch.arange(200) % 10
    idx = sample_labelled(labels, 10, seed=3)
    assert len(idx) == 100 and torch.equal(torch.bincount(labels[idx]), torch.full((10,), 10))
    assert torch.equal(idx, sample_labelled(labels, 10, seed=3))
    assert not torch.equal(idx, sample_labelled(labels, 10, seed=4))
    with pytest.raises(ValueError, match="per_class"):
        sample_labelled(labels, 21, seed=0)
    fold = stratified_folds(labels[idx], 5, seed=0)
    for j in range(5):  # every fold: 2 examples of each class
        assert torch.equal(torch.bincount(labels[idx][fold == j], minlength=10), torch.full((10,), 2))
    with pytest.raises(ValueError, match="k must"):
        stratified_folds(labels, 1, seed=0)
    g = _gen(4)
    y = torch.arange(40) % 2
    x = torch.randn((40, 3), generator=g) + 8.0 * y[:, None]
    assert cross_val_accuracy(x, y, 4, 0, hidden=0, epochs=50, lr=5e-2, weight_decay=0.0) == 1.0
