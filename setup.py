"""Package discovery (setuptools.find_packages): ``domains/`` is installed as ``sciddpm.domains``, so a new domain
folder under ``domains/`` (with an ``__init__.py``) is packaged without editing pyproject.toml. All other metadata
is in pyproject.toml."""
from setuptools import find_packages, setup

DOMAINS = find_packages(include=["domains", "domains.*"])

setup(
    packages=["sciddpm", "examples"] + [f"sciddpm.{name}" for name in DOMAINS],
    package_dir={"sciddpm": "sciddpm", "examples": "examples",
                 **{f"sciddpm.{name}": name.replace(".", "/") for name in DOMAINS}},
)
