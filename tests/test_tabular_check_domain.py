"""The tabular example domain (``examples/tabular_domain.py``) keeps the Domain contract (``check_domain``)."""
from __future__ import annotations

import pytest
import torch

from examples.tabular_domain import TabularDomain
from sciddpm.testing import DomainCheckError, check_domain

SMALL_MLP = {"hidden": 32, "layers": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tabular_domain_keeps_the_contract(tmp_path):
    report = check_domain(TabularDomain(), backbone=SMALL_MLP, tmp_dir=tmp_path)
    checks = report["checks"]
    features = len(TabularDomain().train_dataset({}).tensors[0][0])
    assert checks["sample_space"]["shapes"] == [(4, features)]
    assert checks["data_batch"]["network_keywords"] == [] and checks["conditions"]["keys"] == [[]]
    assert checks["export_load"]["max_abs_difference"] == 0.0
    assert (tmp_path / "samples.csv").is_file()
    assert set(checks["outputs"]["metrics"]) == {"mean_abs_error", "std_abs_error", "sliced_w2_heldout"}


def test_an_unconditional_domain_refuses_conditions():
    """The tabular model has no conditions: giving one is the domain's one-line ValueError, named by its check."""
    with pytest.raises(DomainCheckError, match=r"check_domain\[sample_space\]: ValueError: unknown condition 'y' "
                                               r"for domain 'tabular'; valid conditions: none"):
        check_domain(TabularDomain(), backbone=SMALL_MLP, conditions=[{"y": 1}])
