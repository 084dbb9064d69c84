"""Images domain: IDX reader, Fashion-MNIST loader, ADM UNet, denoising loss on real images, FD-classifier."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.domains.images.backbone import UNet, count_parameters
from sciddpm.domains.images.data import (load_fashion_mnist, read_idx, to_model_range, from_model_range,
                                         write_idx)
from sciddpm.domains.images.metrics import (DEFAULT_WEIGHTS, EvalClassifier, classifier_accuracy,
                                            classifier_features, config_path_for, fd_classifier, fd_from_features,
                                            frechet_distance, load_eval_classifier, save_eval_classifier)
from sciddpm.likelihood import dequantize
from sciddpm.objectives import denoising_loss
from sciddpm.schedules import VPSchedule
from sciddpm.spaces import DenseSpace
from tests.domains.images.common import LINEAR_1000

SUBSET = Path(__file__).resolve().parents[2] / "data" / "fashion_mnist_subset"
TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,), dropout=0.0)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest on a shared 2-core machine
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ IDX / data
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(2 * 3 * 5) % 100 - (0 if dtype == np.uint8 else 50)).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape and np.array_equal(a, b)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_idx_bad_files(tmp_path):
    good = tmp_path / "good.idx"
    write_idx(good, np.zeros((4, 3), np.uint8))
    raw = good.read_bytes()
    cases = {
        "magic.idx": b"\x01\x02" + raw[2:],
        "dtype.idx": raw[:2] + b"\x42" + raw[3:],
        "short.idx": raw[:-1],
        "long.idx": raw + b"\x00",
        "header.idx": raw[:6],
        "empty.idx": b"",
        "badgz.idx.gz": gzip.compress(raw)[:-10],
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError) as err:
            read_idx(p)
        msg = str(err.value)
        assert name in msg and "\n" not in msg, msg
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")
    with pytest.raises(ValueError, match="no IDX code"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.int64))


def test_load_fashion_subset():
    for split, n in (("train", 200), ("test", 100)):
        x, y = load_fashion_mnist(SUBSET, split)
        assert x.dtype == np.uint8 and x.shape == (n, 28, 28) and y.dtype == np.int64 and y.shape == (n,)
        assert np.array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
        assert x.max() > 200 and x.min() == 0
    size = sum(p.stat().st_size for p in SUBSET.iterdir())
    assert size < 150_000


def test_load_fashion_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes((SUBSET / "t10k-images-idx3-ubyte.gz").read_bytes())
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_fashion_mnist(tmp_path / "missing_dir")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(SUBSET, "valid")  # type: ignore[arg-type]
    # labels not matching the image count
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="t10k-labels"):
        load_fashion_mnist(tmp_path, "test")


def test_scaling_and_dequantisation():
    x, _ = load_fashion_mnist(SUBSET, "test")
    m = to_model_range(x)
    assert m.shape == (100, 1, 28, 28) and m.dtype == torch.float32 and m.min() == -1 and m.max() <= 1
    assert torch.equal(from_model_range(m)[:, 0], torch.from_numpy(x))
    d, width = dequantize(torch.from_numpy(x).long())
    assert width == pytest.approx(2 / 256) and d.min() >= -1 and d.max() < 1


# ------------------------------------------------------------------------------------------------ UNet
CONFIGS = {
    "tiny": TINY,
    "class": {**TINY, "num_classes": 10},
    "sr3": {**TINY, "cond_channels": 1, "attention_resolutions": ()},
    "sn_head": {**TINY, "out_channels": 2, "channel_mult": (1, 2, 2), "attention_resolutions": (7,)},
    "rgb32": {**TINY, "in_channels": 3, "image_size": 32, "channel_mult": (1, 2, 2), "attention_resolutions": (16, 8)},
}


def _inputs(cfg: dict, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = cfg.get("in_channels", 1), cfg.get("image_size", 28)
    x = torch.randn(b, c, s, s, generator=g)
    t = torch.tensor([0.0, 500.0, 999.0][:b], dtype=torch.float64)
    kw = {}
    if cfg.get("num_classes"):
        kw["y"] = torch.tensor([0, 3, 10][:b])
    if cfg.get("cond_channels"):
        kw["cond_image"] = torch.randn(b, cfg["cond_channels"], s // 2, s // 2, generator=g)
    return x, t, kw


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet_shapes_grads_config(name):
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    model = UNet(schedule=LINEAR_1000, **cfg, zero_init=False)
    x, t, kw = _inputs(cfg)
    out, feats = model(x, t, return_features=True, **kw)
    assert out.shape == (3, cfg.get("out_channels", x.shape[1])) + x.shape[2:]
    n_up = len(cfg["channel_mult"]) * (cfg["num_res_blocks"] + 1)
    assert len(feats) == n_up and all(f.shape[0] == 3 and f.dim() == 4 for f in feats)
    assert feats[-1].shape[-2:] == x.shape[-2:]
    (out.square().mean() + sum(f.mean() for f in feats) * 0).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if cfg.get("num_classes"):  # only the rows of the embedding that were used get gradient
        missing = [n for n in missing if n != "class_emb.weight"]
        assert model.class_emb.weight.grad[[0, 3, 10]].abs().sum(1).gt(0).all()
    assert not missing, missing
    clone = UNet.from_config(json.loads(json.dumps(model.config())), LINEAR_1000)
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(x, t, **kw), out, atol=1e-6)


def test_unet_default_zero_init_and_param_counts():
    default = UNet(schedule=LINEAR_1000)
    x, t, _ = _inputs({})
    assert torch.count_nonzero(default(x, t)) == 0  # ADM zero-initialised output conv
    assert 5_000_000 < count_parameters(default) < 10_000_000
    assert count_parameters(UNet(schedule=LINEAR_1000, **{**TINY, "model_channels": 16})) < 300_000


def test_unet_conditioning_changes_output():
    torch.manual_seed(0)
    model = UNet(schedule=LINEAR_1000, **{**TINY, "num_classes": 10, "cond_channels": 1}, zero_init=False).eval()
    x = torch.randn(2, 1, 28, 28)
    t = torch.full((2,), 300.0, dtype=torch.float64)
    lo = torch.randn(2, 1, 14, 14)
    base = model(x, t, y=torch.tensor([1, 1]), cond_image=lo)
    assert not torch.allclose(base, model(x, t, y=torch.tensor([2, 2]), cond_image=lo))
    null = model(x, t, y=torch.tensor([10, 10]), cond_image=lo)
    assert torch.equal(null, model(x, t, y=None, cond_image=lo))  # y=None is the null token
    assert not torch.allclose(null, base)
    assert not torch.allclose(base, model(x, t, y=torch.tensor([1, 1]), cond_image=lo + 1))
    assert not torch.allclose(base, model(x, t + 100, y=torch.tensor([1, 1]), cond_image=lo))
    # full-size cond_image is used as is; wrong inputs are refused
    assert model(x, t, y=torch.tensor([1, 1]), cond_image=torch.randn(2, 1, 28, 28)).shape == x.shape
    with pytest.raises(ValueError, match="labels"):
        model(x, t, y=torch.tensor([11, 0]), cond_image=lo)
    with pytest.raises(ValueError, match="cond_image"):
        model(x, t, y=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        UNet(schedule=LINEAR_1000, **TINY)(x, t, y=torch.tensor([1, 1]))


def test_unet_reads_the_noise_level_not_raw_time():
    """The same weights give the same output for the same noise level ς = σ/α under two schedules (linear discrete
    and VP continuous at matched ς); a missing schedule and a v1 ``time_scale`` config are refused."""
    torch.manual_seed(0)
    vp = VPSchedule()
    a = UNet(schedule=LINEAR_1000, **TINY, zero_init=False).eval()
    b = UNet(schedule=vp, **TINY, zero_init=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([5.0, 250.0, 750.0], dtype=torch.float64)
    t_vp = vp.time_at_varsigma(LINEAR_1000.varsigma(t))
    assert torch.allclose(vp.varsigma(t_vp), LINEAR_1000.varsigma(t), rtol=1e-9)
    assert torch.allclose(a(x, t), b(x, t_vp), atol=1e-5)
    assert not torch.allclose(a(x, t), b(x, t / 1000.0), atol=1e-3)  # raw t/T would be another noise level
    with pytest.raises(ValueError, match="needs schedule=NoiseSchedule"):
        UNet(**TINY)
    with pytest.raises(ValueError, match="time_scale"):
        UNet.from_config({**a.config(), "time_scale": 1000.0}, LINEAR_1000)


def test_unet_bf16_autocast():
    torch.manual_seed(0)
    cfg = {**TINY, "num_classes": 10, "cond_channels": 1}
    model = UNet(schedule=LINEAR_1000, **cfg, zero_init=False)
    x, t, kw = _inputs(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, feats = model(x, t, return_features=True, **kw)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(torch.isfinite(f.float()).all() for f in feats)
    ref = model(x, t, **kw)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


def test_denoising_loss_falls_on_subset():
    """ε-MSE of a tiny UNet on 64 real images (minibatches of 16) falls over 80 Adam steps."""
    torch.manual_seed(0)
    x, _ = load_fashion_mnist(SUBSET, "train")
    x0 = to_model_range(x[:64])
    model = UNet(schedule=LINEAR_1000, **{**TINY, "attention_resolutions": ()})
    schedule, space = LINEAR_1000, DenseSpace((16, 1, 28, 28))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(80):
        batch = x0[torch.randperm(64, generator=gen)[:16]]
        loss = denoising_loss(model, schedule, space, batch, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert losses[0] == pytest.approx(1.0, abs=0.1)  # zero-initialised output: ε̂ = 0
    assert last < 0.4 * first, (first, last)


# ------------------------------------------------------------------------------------------------ metrics
def test_frechet_distance_formula():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(500, 4)), rng.normal(size=(400, 4)) * 2 + 1
    assert fd_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)
    assert fd_from_features(f1, f2) == pytest.approx(fd_from_features(f2, f1), rel=1e-8)
    # 1-D closed form: (μ1 − μ2)² + (σ1 − σ2)²
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == pytest.approx(10.0)
    # commuting diagonal covariances: ‖Δμ‖² + Σ (√a − √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(3 + 1 + 0 + 4)
    with pytest.raises(ValueError):
        fd_from_features(f1, f2[:, :3])


def _classifier() -> tuple[EvalClassifier, str]:
    if DEFAULT_WEIGHTS.is_file():
        return load_eval_classifier(DEFAULT_WEIGHTS), "trained"
    torch.manual_seed(0)
    return EvalClassifier().eval(), "random-init"


SOURCE = "trained" if DEFAULT_WEIGHTS.is_file() else "random-init"


@pytest.mark.parametrize("source", [SOURCE])  # the test id says which classifier was used
def test_fd_classifier_properties(source):
    clf, used = _classifier()
    assert used == source
    x, y = load_fashion_mnist(SUBSET, "train")
    imgs = to_model_range(x)
    feats = classifier_features(imgs, clf)
    assert feats.shape == (200, 128) and feats.dtype == np.float64
    scale = np.trace(np.cov(feats, rowvar=False))
    assert abs(fd_from_features(feats, feats)) < 1e-6 * scale
    xt, _ = load_fashion_mnist(SUBSET, "test")
    ab, ba = fd_classifier(imgs, xt, clf), fd_classifier(xt, imgs, clf)  # float and uint8 inputs both accepted
    assert ab == pytest.approx(ba, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    fds = [fd_classifier(imgs, (imgs + s * torch.randn(imgs.shape, generator=g)).clamp(-1, 1), clf)
           for s in (0.05, 0.2, 0.5)]
    assert 0 < fds[0] < fds[1] < fds[2], fds
    acc = classifier_accuracy(imgs, y, clf)
    if source == "trained":
        assert acc > 0.85 and json.loads(config_path_for(DEFAULT_WEIGHTS).read_text())["test_accuracy"] >= 0.9
    else:
        assert 0 <= acc <= 1


def test_classifier_save_load_and_tampering(tmp_path):
    torch.manual_seed(0)
    model = EvalClassifier(channels=(4, 8, 8), feature_dim=16).eval()
    path = save_eval_classifier(model, tmp_path / "clf.safetensors", info={"test_accuracy": 0.0})
    loaded = load_eval_classifier(path)
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="missing.safetensors"):
        load_eval_classifier(tmp_path / "missing.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the tensor data: caught by the side-car SHA-256
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    config_path_for(bad).write_text(config_path_for(path).read_text())
    with pytest.raises(ValueError, match="bad.safetensors.*SHA-256"):
        load_eval_classifier(bad)
    garbage = tmp_path / "garbage.safetensors"  # no side-car: the safetensors parser must refuse it
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError, match="garbage.safetensors") as err:
        load_eval_classifier(garbage)
    assert "\n" not in str(err.value)
    renamed = tmp_path / "other.safetensors"  # wrong tensors for the declared config
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(renamed), metadata={"config": json.dumps(model.config())})
    with pytest.raises(ValueError, match="other.safetensors"):
        load_eval_classifier(renamed)
