"""The images domain through the engine: train a few steps on the committed subset, export, load, sample, write."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sciddpm.domain import domain_class, known_domains
from sciddpm.export import load
from sciddpm.guidance import ClassifierFree
from sciddpm.objectives import eps_predictor
from sciddpm.samplers import ddim, prior_sample, time_grid
from sciddpm.training import config_from_dict, fit
from tests.domains.images.common import TINY_UNET

TINY = {**TINY_UNET, "zero_init": False}



def _config(**data):
    return config_from_dict({"domain": "images", "data": {"max_train": 64, "n_reference": 50, **data},
                             "backbone": TINY, "batch_size": 8, "max_steps": 2, "checkpoint_every": 100,
                             "log_every": 1, "accelerator": "cpu", "lr": 1e-3})


def test_registered_and_bad_path():
    assert "images" in known_domains()
    cls = domain_class("images")
    assert cls.data_range == (-1.0, 1.0) and cls.resolution == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="not found"):
        cls({}).train_dataset({"path": "/nonexistent/fashion"})


def test_train_export_load_sample_write(tmp_path):
    module = fit(_config(), tmp_path / "run", progress=False)
    assert module.global_step == 2
    model = load(tmp_path / "run" / "export")
    out = model.sample(4, sampler="ddim", steps=3, seed=0)
    assert out.sample.shape == (4, 1, 28, 28) and torch.isfinite(out.sample).all()
    again = load(tmp_path / "run" / "export").sample(4, sampler="ddim", steps=3, seed=0).sample
    assert torch.equal(out.sample, again)
    # a 2-step network extrapolates wildly at x̂₀ = x_T/α_T; with Ho et al.'s x̂₀ clipping samples are images in [-1, 1]
    space = model.domain.sample_space(4)
    gen = torch.Generator().manual_seed(0)
    eps = eps_predictor(model.net, model.schedule, space, model.parameterization)
    x = ddim(eps, model.schedule, space, prior_sample(model.schedule, space, gen), time_grid(model.schedule, 3),
             clip_x0=(-1.0, 1.0)).sample
    assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1.0 + 1e-5
    model.domain.write_samples(tmp_path / "s.npy", x)
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 28, 28)
    model.domain.write_samples(tmp_path / "s.png", x)  # each extension is its own format, no side files
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    model.domain.write_samples(tmp_path / "s.npz", x)
    with np.load(tmp_path / "s.npz") as npz:
        assert np.array_equal(npz["samples"], np.load(tmp_path / "s.npy"))
    with pytest.raises(ValueError, match=r"s\.csv has extension '\.csv'; this writer writes \.npy, \.npz, \.png"):
        model.domain.write_samples(tmp_path / "s.csv", x)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("s", ".s"))) == ["s.npy", "s.npz", "s.png"]
    model.domain.plot_samples(tmp_path / "p.png", x)
    assert (tmp_path / "p.png").stat().st_size > 0
    metrics = model.domain.evaluate(x.clamp(-1, 1))
    assert np.isfinite(metrics["fd_classifier"]) and "classifier_accuracy" not in metrics


def test_class_conditional_cfg(tmp_path):
    cfg = _config(class_conditional=True, p_uncond=0.5)
    module = fit(cfg, tmp_path / "run", progress=False)
    net = module.net
    assert net.class_emb.num_embeddings == 11  # 10 classes + the null token
    dom = module.domain
    batch = dom.collate([dom.train_dataset(dom.options)[i] for i in range(64)])
    space = dom.space_for(batch)
    assert torch.equal(dom.network_condition(space)["y"], batch[1].long())  # the data's labels, as recorded
    y = dom.training_condition(space, torch.Generator().manual_seed(0))["y"]  # condition dropout for training
    assert ((y == 10) | (y == batch[1])).all() and (y == 10).any() and (y != 10).any()

    model = load(tmp_path / "run" / "export")
    out = model.sample(4, sampler="ddpm", steps=3, seed=0)
    assert out.sample.shape == (4, 1, 28, 28) and torch.isfinite(out.sample).all()
    assert out.space.condition["y"].tolist() == [0, 1, 2, 3]  # default labels travel with the samples
    given = model.sample(3, sampler="ddim", steps=3, seed=0, conditions={"y": [7, 7, 2]})
    assert given.space.condition["y"].tolist() == [7, 7, 2]
    # classifier-free guidance from outside the network: λ = 1 is the conditional model, λ = 0 the null-token one
    cond_run = model.sample(3, sampler="ddim", steps=3, seed=1, conditions={"y": 4})
    null_run = model.sample(3, sampler="ddim", steps=3, seed=1, conditions={"y": 10 - 10})
    lam1 = model.sample(3, sampler="ddim", steps=3, seed=1, conditions={"y": 4}, guidance=ClassifierFree(1.0))
    # tolerance: the doubled batch changes float32 convolution round-off (~1e-6 per call), grown by 1/α over the steps
    torch.testing.assert_close(lam1.sample, cond_run.sample, atol=2e-4, rtol=0)
    lam0 = model.sample(3, sampler="ddim", steps=3, seed=1, conditions={"y": 4}, guidance=ClassifierFree(0.0))
    space = dom.sample_space(3, conditions={"y": 4})
    null_space = space.with_condition(y=torch.full((3,), 10))
    x_T = prior_sample(model.schedule, space, torch.Generator().manual_seed(1))
    eps_null = eps_predictor(model.net, model.schedule, null_space, "eps", **dom.network_condition(null_space))
    with torch.no_grad():
        expect = ddim(eps_null, model.schedule, null_space, x_T, time_grid(model.schedule, 3),
                      clip_x0=(-1.0, 1.0)).sample  # images models clip x̂₀ by default (threshold_x0)
    torch.testing.assert_close(lam0.sample, expect, atol=2e-4, rtol=0)
    assert not torch.allclose(null_run.sample, lam0.sample)  # class 0 is not the null token
    metrics = model.domain.evaluate(out.sample.clamp(-1, 1), out.space)
    assert 0.0 <= metrics["classifier_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="unknown condition 'label'.*valid conditions: y"):
        model.sample(2, conditions={"label": 1})
    with pytest.raises(ValueError, match="condition 'y' must lie in 0..9"):
        model.sample(2, conditions={"y": [3, 10]})


def test_unconditional_model_refuses_guidance_and_conditions(tmp_path):
    module = fit(_config(), tmp_path / "run", progress=False)
    model = module.ema_model()
    with pytest.raises(ValueError, match="unconditional mode"):
        model.sample(2, steps=2, guidance=ClassifierFree(2.0))
    with pytest.raises(ValueError, match="unknown condition 'y'.*valid conditions: none"):
        model.sample(2, steps=2, conditions={"y": 1})


def test_bad_labels_are_one_line_errors():
    """Labels given at sampling time: one int or n ints in 0..9; anything else is refused by name."""
    dom = domain_class("images")({"class_conditional": True})
    assert dom.sample_space(3, conditions={"y": 7.0}).condition["y"].tolist() == [7, 7, 7]
    for bad, msg in ((2.5, "condition 'y' must hold integers"), ([1, 2], "condition 'y' holds 2 labels for 3 samples"),
                     ([1, 2, 10], r"condition 'y' must lie in 0\.\.9")):
        with pytest.raises(ValueError, match=msg):
            dom.sample_space(3, conditions={"y": bad})


def test_sampling_keeps_no_state_on_the_domain(tmp_path):
    """Two condition sets from one domain object, in either order, give the same samples and scores."""
    model = load_or_fit(tmp_path)
    first_a = model.sample(4, sampler="ddim", steps=3, seed=0, conditions={"y": [1, 2, 3, 4]})
    first_b = model.sample(4, sampler="ddim", steps=3, seed=0, conditions={"y": 9})
    eval_b = model.domain.evaluate(first_b.sample.clamp(-1, 1), first_b.space)
    again_a = model.sample(4, sampler="ddim", steps=3, seed=0, conditions={"y": [1, 2, 3, 4]})
    eval_a = model.domain.evaluate(first_a.sample.clamp(-1, 1), first_a.space)  # scored after b was sampled
    assert torch.equal(first_a.sample, again_a.sample)
    assert eval_a == model.domain.evaluate(again_a.sample.clamp(-1, 1), again_a.space)
    assert eval_b == model.domain.evaluate(first_b.sample.clamp(-1, 1), first_b.space)
    assert not torch.equal(first_a.sample, first_b.sample)


def load_or_fit(tmp_path):
    fit(_config(class_conditional=True), tmp_path / "run", progress=False)
    return load(tmp_path / "run" / "export")


def test_gpu_script_tiny_on_cpu(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_images.py"
    spec = importlib.util.spec_from_file_location("gpu_images_under_test", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["gpu_images.py", "--tiny", "--results-dir", str(tmp_path)])
    mod.main()
    rows = json.loads((tmp_path / "gpu_images_tiny.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["bf16", "32"]
    assert all(r["timed_steps"] == 3 and r["it_per_s"] > 0 and np.isfinite(r["final_loss"]) for r in rows)
