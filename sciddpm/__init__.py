"""sciddpm: diffusion probabilistic models for science data.

The core is modality-agnostic: a noise schedule (``sciddpm.schedules``), a state space
(``sciddpm.spaces``), an ε-predictor (``sciddpm.objectives``) and stateless samplers
(``sciddpm.samplers``), with likelihoods (``sciddpm.likelihood``) and an exact Gaussian-mixture oracle
(``sciddpm.oracle``) for testing every formula. Domains plug in through the ``sciddpm.domains`` entry-point group
(``sciddpm.domain``); this project's own live in ``sciddpm.domains``. ``sciddpm.load(path)`` rebuilds an exported
model for inference without importing Lightning.
"""
from .domain import Domain, get_domain, register_domain
from .guidance import (batched_pair, classifier_free_guidance, classifier_guidance, classifier_log_prob,
                       energy_guidance, noisy_classifier_loss, repaint, replacement_inpainting, sdedit_start)
from .likelihood import LikelihoodResult, elbo, ode_log_likelihood
from .objectives import denoising_loss, eps_predictor
from .oracle import GaussianMixture, sliced_wasserstein2
from .samplers import (SAMPLERS, SamplerOutput, ddim, ddpm, dpm_solver_pp_2m, euler_maruyama, get_sampler, heun,
                       predictor_corrector, prior_sample, probability_flow_rk45, time_grid)
from .multistep import dpm_solver_pp, dpm_solver_pp_3m, unipc
from .schedules import (CosineSchedule, DiscreteSchedule, LinearSchedule, NoiseSchedule, PolynomialSchedule,
                        SubVPSchedule, VESchedule, VPSchedule, schedule_from_config)
from .spaces import DenseSpace, GraphSpace, MaskedSpace, ProductSpace, Space, TorusSpace, ZeroCoMSpace

__version__ = "0.1.0"

_LAZY = {"DiffusionModule": "training", "fit": "training", "TrainConfig": "config", "load_config": "config",
         "export_model": "export", "load": "export", "DiffusionModel": "model"}


def __getattr__(name: str):
    """Import a module only when one of its names is used: ``sciddpm.load`` (``sciddpm.export``) never imports
    Lightning; only ``DiffusionModule`` / ``fit`` (``sciddpm.training``, the engine) do."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sciddpm' has no attribute {name!r}")

__all__ = [
    "CosineSchedule", "DenseSpace", "DiscreteSchedule", "GaussianMixture", "GraphSpace", "LikelihoodResult",
    "LinearSchedule", "MaskedSpace", "NoiseSchedule", "PolynomialSchedule", "ProductSpace", "SAMPLERS",
    "SamplerOutput", "Space", "SubVPSchedule", "TorusSpace", "VESchedule", "VPSchedule", "ZeroCoMSpace", "ddim",
    "ddpm", "denoising_loss", "dpm_solver_pp_2m", "elbo", "eps_predictor", "euler_maruyama", "get_sampler", "heun",
    "ode_log_likelihood", "predictor_corrector", "prior_sample", "probability_flow_rk45", "schedule_from_config",
    "sliced_wasserstein2", "time_grid", "Domain", "get_domain", "register_domain", "classifier_free_guidance",
    "classifier_guidance", "energy_guidance", "repaint", "replacement_inpainting", "sdedit_start", "DiffusionModule",
    "TrainConfig", "load_config", "export_model", "fit", "load", "DiffusionModel", "batched_pair", "classifier_log_prob",
    "noisy_classifier_loss", "dpm_solver_pp", "dpm_solver_pp_3m", "unipc",
]
