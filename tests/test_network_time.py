"""Time conditioning in one place: c_noise(t) = ¼ ln max(σ/α, 1e-5) (EDM, Karras et al. 2022), the molecule
networks' τ(t), and the checks that a network is never built, loaded or used with the wrong notion of time."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sciddpm.domains.molecules.adapter import EDM_SCHEDULE, MoleculesDomain
from sciddpm.domains.molecules.backbone import TIME_FEATURE_RANGE, EGNNDynamics, time_feature
from sciddpm.domains.molecules.property import PropertyPredictor, train_property_predictor
from sciddpm.network_time import RAW_TIME_KEYS, check_network_schedule, refuse_raw_time_config, require_schedule
from sciddpm.schedules import (CosineSchedule, LinearSchedule, PolynomialSchedule, SubVPSchedule, VESchedule,
                               VPSchedule, schedule_from_config)
from tests.conftest import ALL_SCHEDULES

F64 = torch.float64
FLOOR = 0.25 * math.log(1e-5)
QM9_SUBSET = Path(__file__).resolve().parent / "data" / "qm9_subset.npz"


def _grid(s, n: int = 4001) -> torch.Tensor:
    return torch.linspace(s.t_min, s.t_max, n, dtype=F64)


def test_c_noise_is_a_quarter_log_varsigma(schedule):
    """c_noise(t) = ¼ ln(σ_t/α_t) = −λ_t/8 where σ/α > 1e-5 (to 1e-12), the same with check=False."""
    t = torch.linspace(schedule.t_min + 0.01 * (schedule.t_max - schedule.t_min), schedule.t_max, 200, dtype=F64)
    c = schedule.c_noise(t)
    assert c.dtype == F64 and c.shape == t.shape
    exact = 0.25 * torch.log(schedule.sigma(t) / schedule.alpha(t))
    assert (schedule.sigma(t) / schedule.alpha(t) > 1e-5).all()
    torch.testing.assert_close(c, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, -schedule.log_snr(t) / 8, rtol=0, atol=0)
    assert torch.equal(schedule.c_noise(t, check=False), c)


def test_c_noise_finite_and_monotone_over_the_range(schedule):
    """Over [t_min, t_max] (ends included) c_noise is finite, ≥ its floor ¼ ln 1e-5, and strictly increasing; the
    data end of a discrete schedule (σ = 0, λ = +∞) sits exactly on the floor."""
    c = schedule.c_noise(_grid(schedule))
    assert torch.isfinite(c).all() and (c >= FLOOR).all()
    assert (c[1:] > c[:-1]).all()
    if schedule.num_steps is not None:
        assert float(schedule.c_noise(0.0)) == FLOOR


@pytest.mark.parametrize("name,lo,hi", [("linear", FLOOR, 1.265), ("cosine", FLOOR, 2.479),
                                        ("polynomial", FLOOR, 1.439), ("vp", -1.139, 1.256),
                                        ("subvp", -2.279, 1.256)])
def test_c_noise_ranges_quoted_in_the_docstring(name, lo, hi):
    """The ranges NoiseSchedule.c_noise documents (to 1e-3); VE(0.01, 50): ¼ ln 0.01 … ¼ ln 50 exactly."""
    s = ALL_SCHEDULES[name]()
    c = s.c_noise(torch.tensor([s.t_min, s.t_max], dtype=F64))
    assert abs(float(c[0]) - lo) < 1e-3 and abs(float(c[1]) - hi) < 1e-3
    ve = VESchedule(0.01, 50.0)
    torch.testing.assert_close(ve.c_noise(torch.tensor([0.0, 1.0], dtype=F64)),
                               torch.tensor([0.25 * math.log(0.01), 0.25 * math.log(50.0)], dtype=F64))


def test_c_noise_rejects_bad_times():
    s = LinearSchedule(1000)
    with pytest.raises(ValueError, match="out of range"):
        s.c_noise(torch.tensor([1001.0], dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        VPSchedule().c_noise(torch.tensor([float("nan")], dtype=F64))


PAIRS = [(LinearSchedule(1000), VPSchedule()), (CosineSchedule(1000), VESchedule(0.01, 50.0)),
         (PolynomialSchedule(1000), SubVPSchedule())]


def _matched_times(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Times t_a of ``a`` (steps 1..N, where ς lies inside b's range) and t_b of ``b`` with ς_b(t_b) = ς_a(t_a)."""
    t_a = torch.arange(1, a.num_steps + 1, 7, dtype=F64)
    vs_lo, vs_hi = b.varsigma(torch.tensor([b.t_min, b.t_max], dtype=F64))
    vs = a.varsigma(t_a)
    keep = (vs > vs_lo * 1.001) & (vs < vs_hi * 0.999)
    t_a, t_b = t_a[keep], b.time_at_varsigma(vs[keep])
    assert keep.sum() > 20
    torch.testing.assert_close(b.varsigma(t_b), a.varsigma(t_a), rtol=1e-9, atol=0)
    return t_a, t_b


@pytest.mark.parametrize("a,b", PAIRS, ids=["linear-vp", "cosine-ve", "polynomial-subvp"])
def test_same_noise_level_same_input_under_two_schedules(a, b):
    """At matched noise levels ς (a discrete schedule's steps 1..N, a continuous schedule's times in [t_min, 1])
    c_noise and the molecule feature τ agree to 1e-9."""
    t_a, t_b = _matched_times(a, b)
    torch.testing.assert_close(a.c_noise(t_a), b.c_noise(t_b), rtol=0, atol=1e-9)
    torch.testing.assert_close(time_feature(a, t_a), time_feature(b, t_b), rtol=0, atol=1e-9)


def test_egnn_output_same_for_same_noise_level():
    """One EGNN's weights under the linear discrete and the VP schedule give the same ε̂ (to 1e-5) at matched ς
    (and ε̂ does depend on the noise level, so the match is not trivial)."""
    lin, vp = PAIRS[0]
    t_a, t_b = _matched_times(lin, vp)
    t_a, t_b = t_a[::10][:3], t_b[::10][:3]
    torch.manual_seed(0)
    net_a = EGNNDynamics(in_node_nf=6, hidden_nf=16, n_layers=2, schedule=lin).eval()
    net_b = EGNNDynamics.from_config(net_a.config(), vp).eval()
    net_b.load_state_dict(net_a.state_dict())
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x = torch.randn(9, 9)
    with torch.no_grad():
        out_a, out_b = net_a(x, t_a, batch=batch), net_b(x, t_b, batch=batch)
        other = net_b(x, t_b.flip(0), batch=batch)
    assert (out_a - out_b).abs().max() < 1e-5
    assert (out_a - other).abs().max() > 1e-3


def test_time_feature_fixed_map():
    """τ = (c_noise − ¼ ln 1e-5)/(¼ ln 1e5 − ¼ ln 1e-5): the data end ↦ 0, ς = 1 ↦ ½, ς = 1e5 ↦ 1 (VE, σ = ς)."""
    assert TIME_FEATURE_RANGE == (FLOOR, -FLOOR)
    assert float(time_feature(LinearSchedule(1000), torch.tensor([0.0], dtype=F64))) == 0.0
    ve = VESchedule(1e-3, 1e5)
    t = ve.time_at_varsigma(torch.tensor([1.0, 1e5], dtype=F64))
    torch.testing.assert_close(time_feature(ve, t), torch.tensor([0.5, 1.0], dtype=F64), rtol=0, atol=1e-12)
    poly = schedule_from_config(EDM_SCHEDULE)  # EDM's t/T ∈ [0, 1] becomes τ ∈ [0, 0.75] (docstring values)
    tau = time_feature(poly, torch.tensor([1.0, 1000.0], dtype=F64))
    assert abs(float(tau[0]) - 0.254) < 1e-3 and abs(float(tau[1]) - 0.750) < 1e-3


def test_egnn_refuses_times_outside_its_schedule():
    net = EGNNDynamics(in_node_nf=6, hidden_nf=8, n_layers=1, schedule=VPSchedule())
    x, batch = torch.randn(3, 9), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"t must lie in the schedule's range \[0.001, 1.0\]"):
        net(x, torch.tensor([500.0], dtype=F64), batch=batch)


def test_networks_need_a_schedule_and_refuse_v1_configs():
    """No silent default schedule: every constructor and build_backbone raises without one; a v1 config that still
    names time_scale or sin_embedding is refused by from_config and build_backbone."""
    with pytest.raises(ValueError, match="needs schedule=NoiseSchedule"):
        require_schedule(None, "x")
    assert require_schedule(VPSchedule(), "x").config()["type"] == "vp"
    for make in (lambda: EGNNDynamics(in_node_nf=6, hidden_nf=8, n_layers=1),
                 lambda: PropertyPredictor(hidden_nf=8, n_layers=1, noise_aware=True),
                 lambda: MoleculesDomain({}).build_backbone({"n_layers": 1, "hidden_nf": 8}),
                 lambda: MoleculesDomain({}).build_backbone({"type": "e3nn"})):
        with pytest.raises(ValueError, match="needs schedule=NoiseSchedule"):
            make()
    assert EGNNDynamics(in_node_nf=6, hidden_nf=8, n_layers=1, condition_time=False).schedule is None
    assert PropertyPredictor(hidden_nf=8, n_layers=1).schedule is None  # the clean-data evaluator has no time
    poly = schedule_from_config(EDM_SCHEDULE)
    net = EGNNDynamics(in_node_nf=6, hidden_nf=8, n_layers=1, schedule=poly)
    for key in RAW_TIME_KEYS:
        with pytest.raises(ValueError, match=key):
            EGNNDynamics.from_config({**net.config(), key: 1000.0}, poly)
        with pytest.raises(ValueError, match=key):
            MoleculesDomain({}).build_backbone({"n_layers": 1, key: False}, poly)
    refuse_raw_time_config(net.config(), "x")  # a v2 config passes


def test_network_used_with_another_schedule_is_refused():
    poly, lin = schedule_from_config(EDM_SCHEDULE), LinearSchedule(1000)
    net = MoleculesDomain({}).build_backbone({"n_layers": 1, "hidden_nf": 8}, poly)
    assert net.schedule is poly
    check_network_schedule(net, schedule_from_config(poly.config()), "x")  # equal config: fine
    check_network_schedule(torch.nn.Linear(2, 2), lin, "x")  # no schedule attribute: nothing to compare
    with pytest.raises(ValueError, match="built for schedule"):
        check_network_schedule(net, lin, "x")
    guide = PropertyPredictor(hidden_nf=8, n_layers=1, noise_aware=True, schedule=poly)
    with pytest.raises(ValueError, match="train_property_predictor: the network was built for schedule"):
        train_property_predictor(guide, [], seconds=1.0, schedule=lin, space_for=lambda b: None)


def test_images_helpers_refuse_another_schedule():
    """extract_features and super_resolve noise with the schedule they are given: one other than the UNet's own
    is refused (the UNet would read c_noise of its own schedule)."""
    from sciddpm.domains.images.backbone import UNet
    from sciddpm.domains.images.features import extract_features
    from sciddpm.domains.images.sr3 import super_resolve
    from tests.domains.images.common import LINEAR_1000, TINY_UNET

    net = UNet(**TINY_UNET, schedule=LINEAR_1000)
    with pytest.raises(ValueError, match="extract_features: the network was built for schedule"):
        extract_features(net, CosineSchedule(1000), torch.zeros(2, 1, 28, 28), [10], [0],
                         generator=torch.Generator())
    sr = UNet(**TINY_UNET, cond_channels=1, schedule=LINEAR_1000)
    with pytest.raises(ValueError, match="super_resolve: the network was built for schedule"):
        super_resolve(sr, VPSchedule(), torch.zeros(1, 1, 14, 14), steps=2)
