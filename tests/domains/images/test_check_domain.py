"""The images domain keeps the Domain contract (``sciddpm.testing.check_domain``): a class-conditional model (labels
travel in the space, so sampling label sets A then B or B then A from one domain object gives the same images,
files and classifier accuracy) and an SR3 super-resolution model (low-resolution inputs and their references)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from sciddpm.domains.images.adapter import ImagesDomain
from sciddpm.domains.images.sr3 import downsample
from sciddpm.testing import DomainCheckError, check_domain, registered_domains

from .common import TINY_UNET

#: The tiny UNet without ADM's zero-initialised output convs: untrained, its output must depend on the labels.
UNET = {**TINY_UNET, "zero_init": False}


def test_class_conditional_images_keep_the_contract():
    report = check_domain(ImagesDomain({"class_conditional": True}), backbone=UNET,
                          conditions=[{"y": 3}, {"y": [0, 5, 9, 2]}, {}])
    checks = report["checks"]
    assert checks["sample_space"]["shapes"] == [(4, 1, 28, 28)] * 3
    assert checks["data_batch"]["network_keywords"] == ["y"]
    assert checks["export_load"]["max_abs_difference"] == 0.0
    assert "evaluate" in checks["sampling_state"]["compared"]
    assert {"fd_classifier", "classifier_accuracy"} <= set(checks["outputs"]["metrics"])


def test_super_resolution_images_keep_the_contract():
    """SR3 (f = 2): the default low-resolution inputs (first test images, with their HR references), given inputs,
    and given inputs with references; ``evaluate`` then adds PSNR/SSIM against the references."""
    gen = torch.Generator().manual_seed(0)
    high = torch.rand(4, 1, 28, 28, generator=gen) * 2 - 1
    low = downsample(high, 2)
    report = check_domain(ImagesDomain({"super_resolution": 2}), backbone=UNET,
                          conditions=[{}, {"low_res": low}, {"low_res": low, "reference": high}])
    checks = report["checks"]
    assert checks["data_batch"]["network_keywords"] == ["cond_image"]
    assert checks["conditions"]["keys"] == [["cond_image", "reference"], ["cond_image"], ["cond_image", "reference"]]
    assert {"psnr", "ssim", "bicubic_psnr"} <= set(checks["outputs"]["metrics"])  # the default set has references


class LabelsOnTheDomain(ImagesDomain):
    """The images domain before the v2 contract: ``sample_space`` kept the labels on the domain for ``evaluate``."""

    name = "images_labels_on_the_domain"

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> Any:
        space = super().sample_space(n, generator, conditions)
        self._labels = space.condition["y"]
        return space

    def evaluate(self, samples: Any, space: Any = None) -> dict[str, float]:
        return super().evaluate((samples, self._labels))


def test_labels_kept_on_the_domain_are_caught():
    """Untrained samples make the classifier's accuracy blind to the labels, so it is the attribute that shows."""
    with pytest.raises(DomainCheckError, match=r"check_domain\[sampling_state\]: domain attribute '_labels' depends on "
                                               r"which condition set was sampled last"):
        with registered_domains(LabelsOnTheDomain):
            check_domain(LabelsOnTheDomain({"class_conditional": True}), backbone=UNET,
                         conditions=[{"y": 3}, {"y": [0, 5, 9, 2]}])
