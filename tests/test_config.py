"""Config validation: unknown keys in every section give one-line errors listing the valid keys; numbers as people
write them are accepted; a named data path that does not exist is an error, never bundled data."""
from __future__ import annotations

from pathlib import Path

import pytest

from sciddpm.cli import main
from sciddpm.config import TrainConfig, as_number, check_domain_config, config_from_dict, config_keys, load_config
from sciddpm.domain import domain_class

ROOT = Path(__file__).resolve().parents[1]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sciddpm: error: "), err
    return err[0]


def test_yaml_numbers_as_people_write_them(tmp_path):
    """YAML 1.1 reads 1e-3 and 1e3 as strings: they reach the config as the numbers they are."""
    f = tmp_path / "c.yaml"
    f.write_text("domain: tabular\nlr: 1e-3\nmax_steps: 1e3\nbatch_size: 1_024\nema_decay: .9999\n"
                 "weight_decay: 0\nmin_lr_ratio: '5E-2'\n")
    cfg = load_config(f)
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)
    assert cfg.batch_size == 1024 and cfg.ema_decay == 0.9999 and cfg.min_lr_ratio == 0.05
    assert isinstance(cfg.weight_decay, float)
    assert as_number("2.0", int) == 2 and as_number(True, int) is True and as_number("x", float) == "x"


@pytest.mark.parametrize("values, field", [
    ({"max_steps": "1.5e2x"}, "max_steps"), ({"max_steps": 150.5}, "max_steps"), ({"lr": "fast"}, "lr"),
    ({"lr": True}, "lr"), ({"lr": "nan"}, "lr"), ({"lr": float("inf")}, "lr"), ({"compile": "yes"}, "compile")])
def test_non_numbers_are_still_refused(values, field):
    with pytest.raises(ValueError, match=rf"^config field '{field}' in flags must be"):
        config_from_dict({"domain": "tabular", **values}, "flags")


def test_domain_is_required_and_has_no_default():
    assert TrainConfig().domain == ""
    with pytest.raises(ValueError, match="config field 'domain' is required"):
        config_from_dict({"max_steps": 3})


def test_unknown_top_level_key_lists_the_valid_ones(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("domain: tabular\nmax_step: 10\n")
    err = _error(capsys, ["train", "--config", str(f), "--output", str(tmp_path / "run")])
    assert err == f"sciddpm: error: unknown config key 'max_step' in {f}; valid keys: {', '.join(sorted(config_keys()))}"
    assert not (tmp_path / "run").exists()


def test_unknown_data_key(tmp_path, capsys):
    """A misspelt data: key used to be ignored silently."""
    f = tmp_path / "run.yaml"
    f.write_text("domain: tabular\nmax_steps: 2\ndata:\n  val_fracton: 0.5\n")
    err = _error(capsys, ["train", "--config", str(f), "--output", str(tmp_path / "run")])
    assert err == ("sciddpm: error: unknown data key 'val_fracton' in config (domain 'tabular'); valid keys: path, "
                   "split_seed, val_fraction")
    assert not (tmp_path / "run").exists()


def test_unknown_backbone_key(tmp_path, capsys):
    """A misspelt backbone: key used to end in a raw TypeError traceback from the network's constructor."""
    f = tmp_path / "run.toml"
    f.write_text('domain = "tabular"\nmax_steps = 2\n[backbone]\nhiden = 8\n')
    err = _error(capsys, ["train", "--config", str(f), "--output", str(tmp_path / "run")])
    assert err == ("sciddpm: error: unknown backbone key 'hiden' in config (domain 'tabular'); valid keys: emb, "
                   "hidden, layers")
    assert not (tmp_path / "run").exists()


def test_missing_data_path_is_an_error_not_bundled_data(tmp_path, capsys):
    missing = tmp_path / "nowhere.csv"
    err = _error(capsys, ["train", "--domain", "tabular", "--data-path", str(missing), "--max-steps", "2",
                          "--output", str(tmp_path / "run")])
    assert err == f"sciddpm: error: data path not found: {missing} (data.path in config)"
    assert not (tmp_path / "run").exists()
    domain = domain_class("tabular")({})
    for bad in ("", None):
        with pytest.raises(ValueError, match="data.path in test must be a file or folder name"):
            check_domain_config(TrainConfig(domain="tabular", data={"path": bad}), domain, "test")


def test_unknown_sampler_option(tmp_path, capsys):
    """Sampler options (`--sampler-option KEY=VALUE`) are checked against the sampler's signature."""
    from sciddpm.training import fit

    fit(TrainConfig(domain="tabular", max_steps=2, checkpoint_every=2, batch_size=16, backbone={"hidden": 8}),
        tmp_path / "run", progress=False)
    export = str(tmp_path / "run" / "export")
    err = _error(capsys, ["sample", export, "--sampler", "ddim", "--sampler-option", "etta=0.5", "--n", "4",
                          "--output", str(tmp_path / "s.csv")])
    prefix = "sciddpm: error: unknown option 'etta' for sampler 'ddim'; valid options: "
    assert err.startswith(prefix) and "eta" in err[len(prefix):].split(", ")
    err = _error(capsys, ["sample", export, "--sampler-option", "eta", "--output", str(tmp_path / "s.csv")])
    assert err == "sciddpm: error: --sampler-option expects KEY=VALUE, got 'eta'"
    assert main(["sample", export, "--sampler", "ddim", "--sampler-option", "eta=1", "--sampler-option",
                 "clip_x0=-3,3", "--n", "4", "--steps", "3",
                 "--output", str(tmp_path / "s.csv")]) == 0
    assert not (tmp_path / ".s.tmp.csv").exists() and (tmp_path / "s.csv").is_file()
