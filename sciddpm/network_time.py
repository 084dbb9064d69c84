"""How networks receive time: through their schedule's noise level, never through a guessed time scale.

A backbone is built with the model's :class:`~sciddpm.schedules.NoiseSchedule` and reads t (in that schedule's
units) only as ``schedule.c_noise(t)`` = ¼ ln(σ_t/α_t) (EDM's input preconditioning, Karras et al. 2022, Table 1),
so the same noise level gives the same network input under every schedule. These helpers make the three ways of
getting that wrong fail loudly: building a network without a schedule, loading a v1 config that still names
``time_scale`` (its weights learned raw t), and using a network with a schedule other than its own.
"""
from __future__ import annotations

from typing import Any, Mapping

from .schedules import NoiseSchedule

#: Backbone config keys of v1 networks, which read raw time (t / time_scale) instead of c_noise(t).
RAW_TIME_KEYS: tuple[str, ...] = ("time_scale", "sin_embedding")


def require_schedule(schedule: NoiseSchedule | None, who: str) -> NoiseSchedule:
    """``schedule`` itself if it is a NoiseSchedule, else ValueError: ``who`` reads its time input as c_noise(t)."""
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"{who} needs schedule=NoiseSchedule (its time input is schedule.c_noise(t)), "
                         f"got {type(schedule).__name__}")
    return schedule


def refuse_raw_time_config(config: Mapping[str, Any], who: str) -> None:
    """ValueError if a backbone ``config`` names a key of a v1 network that read raw time (``RAW_TIME_KEYS``):
    its weights learned t / time_scale, not c_noise(t), so they must be retrained, never silently reused."""
    found = sorted(k for k in RAW_TIME_KEYS if k in config)
    if found:
        raise ValueError(f"{who}: backbone config has {found} (a v1 network that read raw t); networks now read "
                         f"schedule.c_noise(t): drop the key and retrain")


def check_network_schedule(net: Any, schedule: NoiseSchedule, who: str) -> None:
    """ValueError if ``net.schedule`` (the schedule the network reads c_noise(t) through) differs from
    ``schedule`` (compared by ``config()``): noising with one schedule while the network reads the noise level of
    another would silently mis-time it. Networks without a ``schedule`` attribute (or with None) pass."""
    own = getattr(net, "schedule", None)
    if own is not None and own.config() != schedule.config():
        raise ValueError(f"{who}: the network was built for schedule {own.config()} but {schedule.config()} "
                         f"was given")


__all__ = ["RAW_TIME_KEYS", "check_network_schedule", "refuse_raw_time_config", "require_schedule"]
