"""Noise-aware classifier (ADM encoder half) and its guidance helpers: shapes, exact values, finite differences."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sciddpm.domains.images.classifier import NoisyClassifier
from sciddpm.guidance import classifier_guidance, classifier_log_prob, noisy_classifier_loss
from sciddpm.objectives import sample_times
from sciddpm.schedules import LinearSchedule
from sciddpm.spaces import DenseSpace, ZeroCoMSpace
from tests.domains.images.common import LINEAR_1000, TINY_UNET

ROOT = Path(__file__).resolve().parents[3]
SCH = LinearSchedule(1000)
TINY = TINY_UNET



def _clf(**kw) -> NoisyClassifier:
    torch.manual_seed(0)
    return NoisyClassifier(schedule=LINEAR_1000, **{**TINY, **kw}).eval()


@pytest.mark.parametrize("pool", ["attention", "avg"])
def test_classifier_shapes_gradient_and_config_roundtrip(pool, tmp_path):
    """Logits [B, 10]; ∇_x is finite and non-zero; config() + safetensors rebuild the same function."""
    from safetensors.torch import load_file, save_file

    clf = _clf(pool=pool, attention_resolutions=[14])
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    t = torch.tensor([0.0, 500.0, 1000.0])
    logits = clf(x, t)
    assert logits.shape == (3, 10)
    (grad,) = torch.autograd.grad(logits[:, 2].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp_path / "c.safetensors"),
              metadata={"config": json.dumps(clf.config())})
    clone = NoisyClassifier.from_config(json.loads(json.dumps(clf.config())), LINEAR_1000).eval()
    clone.load_state_dict(load_file(str(tmp_path / "c.safetensors")))
    torch.testing.assert_close(clone(x, t), logits, rtol=0, atol=0)


def test_classifier_depends_on_time_and_rejects_bad_input():
    """Without zero-init the logits change with t (same x); bad shapes and options raise ValueError."""
    clf = _clf(zero_init=False)
    x = torch.randn(2, 1, 28, 28)
    a, b = clf(x, torch.full((2,), 10.0)), clf(x, torch.full((2,), 900.0))
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(clf(x, torch.tensor(10.0)), a)  # a scalar t broadcasts over the batch
    with pytest.raises(ValueError, match="x must be"):
        clf(torch.randn(2, 3, 28, 28), torch.zeros(2))
    with pytest.raises(ValueError, match="attention pooling"):
        clf(torch.randn(2, 1, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="pool"):
        NoisyClassifier(schedule=LINEAR_1000, **TINY, pool="max")


def test_noisy_classifier_loss_is_log10_for_uniform_logits_and_feeds_q_xt():
    """Constant logits give exactly log 10; the classifier sees t ~ sample_times and x_t = α_t x₀ + σ_t ε drawn
    from the same generator in that order (reproduced exactly)."""
    x0 = torch.rand(6, 1, 28, 28, dtype=torch.float64) * 2 - 1
    seen = {}

    def uniform(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros(x.shape[0], 10, dtype=x.dtype) + 0 * x.sum()

    loss = noisy_classifier_loss(uniform, SCH, DenseSpace(x0.shape), x0, torch.arange(6),
                                 generator=torch.Generator().manual_seed(3))
    assert loss.dtype == torch.float32
    assert abs(float(loss) - math.log(10)) < 1e-6
    g = torch.Generator().manual_seed(3)
    t, _ = sample_times(SCH, 6, generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(seen["t"], t, rtol=0, atol=0)
    a, s = SCH.alpha(t).reshape(-1, 1, 1, 1), SCH.sigma(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], a * x0 + s * eps, rtol=0, atol=1e-12)
    assert ((t >= 1) & (t <= 1000) & (t == t.round())).all()


def test_noisy_classifier_loss_uses_the_space_and_validates():
    """On a zero-CoM space the classifier's x_t has zero centre of mass; wrong label counts raise."""
    space = ZeroCoMSpace(DenseSpace((4, 5, 3)))
    x0 = space.project(torch.randn(4, 5, 3))
    head = torch.nn.Linear(3, 2)

    def clf(x, t):
        assert x.mean(1).abs().max() < 1e-5
        return head(x.mean(1) + x.pow(2).mean(1))

    loss = noisy_classifier_loss(clf, SCH, space, x0, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(loss)
    with pytest.raises(ValueError, match="labels must hold"):
        noisy_classifier_loss(clf, SCH, space, x0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        noisy_classifier_loss(clf, SCH, space, x0, torch.tensor([0, 1, 2, 1]))


def test_noisy_classifier_loss_decreases_on_a_separable_problem():
    """Two classes of constant 8×8 images (−0.8 vs +0.8): 60 AdamW steps lower the mean loss by more than 40%."""
    torch.manual_seed(0)
    clf = NoisyClassifier(schedule=LINEAR_1000, **TINY, image_size=8, pool="avg").train()
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 2
    x0 = (y.float() * 1.6 - 0.8).reshape(-1, 1, 1, 1).expand(16, 1, 8, 8).contiguous()
    losses = []
    for _ in range(60):
        loss = noisy_classifier_loss(clf, SCH, DenseSpace(x0.shape), x0, y, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5


def test_classifier_log_prob_through_guidance_matches_finite_differences():
    """log p = log softmax gathered at the labels; classifier_guidance's ε̃ − ε equals −λ σ_t ∂log p/∂x by central
    finite differences (float64), per sample."""
    clf = _clf(zero_init=False).double()
    labels = torch.tensor([3, 7])
    lp = classifier_log_prob(clf, labels)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([300.0, 300.0], dtype=torch.float64)
    torch.testing.assert_close(lp(x, t), torch.log_softmax(clf(x, t).float(), -1)[[0, 1], [3, 7]])
    zero_eps = lambda x_, t_: torch.zeros_like(x_)  # noqa: E731
    lam = 2.0
    guided = classifier_guidance(zero_eps, lambda x_, t_: lp(x_, t_).double(), SCH, DenseSpace(x.shape), lam)(x, t)
    assert guided.shape == x.shape
    sigma = float(SCH.sigma(torch.tensor(300.0)))
    h = 1e-5
    for b, i, j in [(0, 5, 7), (0, 14, 14), (1, 20, 3), (1, 9, 21)]:
        e = torch.zeros_like(x)
        e[b, 0, i, j] = h
        with torch.no_grad():
            clf_lp = lambda z: torch.log_softmax(clf(z, t), -1)[b, labels[b]]  # noqa: E731
            fd = float((clf_lp(x + e) - clf_lp(x - e)) / (2 * h))
        assert abs(float(guided[b, 0, i, j]) - (-lam * sigma * fd)) < 1e-6 * max(1.0, abs(lam * sigma * fd))
    with pytest.raises(ValueError, match="logits"):
        classifier_log_prob(clf, torch.tensor([1, 2, 3]))(x, t)


def test_guidance_fashion_smoke_run(tmp_path):
    """The benchmark's --smoke path end to end on the CPU (~15 s): all 10 rows, finite metrics, the PNG grid."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "guidance_fashion.py"), "--smoke", "--device",
                           "cpu", "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "guidance_fashion_smoke.json").read_text())
    rows = out["rows"]
    assert [(r["guidance"], r["scale"]) for r in rows] == (
        [("cfg", s) for s in (0.0, 1.0, 2.0, 4.0)] + [("classifier (uncond)", s) for s in (0.0, 1.0, 2.0, 4.0)]
        + [("classifier (cond)", s) for s in (1.0, 2.0)])
    for r in rows:
        assert math.isfinite(r["fd_classifier"]) and 0 <= r["sample_accuracy"] <= 1 and r["diversity"] > 0
    assert abs(rows[0]["fd_classifier"] - rows[4]["fd_classifier"]) < 1e-3 * rows[0]["fd_classifier"]
    assert set(out["noise_aware_classifier_accuracy"]) == {"0", "250", "500", "750"}
    assert (tmp_path / "guidance_fashion_smoke_samples.png").stat().st_size > 0
