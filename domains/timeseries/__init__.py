"""Multivariate sensor time series (plant SCADA exports such as BATADAL): a TFDPM-style conditional diffusion
forecaster (``backbone``), its Domain (``adapter``), the attack detector built on its predictive distribution
(``detect``, ``report``: ``sciddpm detect``) and the BATADAL competition's metrics (``metrics``)."""
