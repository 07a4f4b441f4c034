"""The VAE owns a frozen configuration; every part declares its options; misspellings fail."""
import dataclasses
import re
import subprocess
import sys

import pytest

from conftest import REPO
from pvae import GUIDES, LIKELIHOODS, PRIORS
from pvae.errors import ConfigError
from pvae.parts import declared_options
from pvae.vae import VAEConfig, build_vae


def test_build_vae_records_every_name_size_and_option():
    vae = build_vae(prior="mog", guide="conv", likelihood="normal", z_dim=3, hidden_dims=[16],
                    num_components=4, conv_channels=2, decoder="conv", beta=2.0)
    c = vae.config
    assert (c.prior, c.guide, c.likelihood, c.z_dim, c.hidden_dims) == ("mog", "conv", "normal", 3, (16,))
    assert dict(c.options) == {"num_components": 4, "conv_channels": 2, "decoder": "conv"}
    assert vae.prior.locs.shape == (4, 3)
    assert vae.q.net.body.conv[0].out_channels == 2 == vae.likelihood.decoder.c
    assert VAEConfig.from_dict(c.to_dict()) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.z_dim = 4
    with pytest.raises(TypeError):
        c.options["num_components"] = 5


@pytest.mark.parametrize("kw, message", [
    (dict(prior="mog", num_component=5), "'num_component' \\(did you mean 'num_components'\\?\\)"),
    (dict(num_components=5), "unknown option 'num_components'.*prior 'standard'"),
    (dict(prior="mog", num_components="abc"), "num_components must be a whole number"),
    (dict(prior="mog", num_components=2.5), "num_components must be a whole number"),
    (dict(z_dim=2.5), "z_dim must be a whole number"),
    (dict(z_dim=0), "z_dim must be positive whole number"),
    (dict(hidden_dims=[16, -1]), "hidden_dims must be positive whole number"),
    (dict(activation="sigmoid"), "unknown activation"),
    (dict(likelihood="normal", learn_scale="yes"), "learn_scale must be true or false"),
    (dict(likelihood="normal", likelihood_scale=float("nan")), "likelihood_scale must be a finite"),
    (dict(beta=-1), "beta must be a finite number >= 0"),
])
def test_bad_options_are_one_config_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        build_vae(hidden_dims=kw.pop("hidden_dims", (8,)), **kw)


@pytest.mark.parametrize("registry", [PRIORS, GUIDES, LIKELIHOODS])
def test_every_declared_option_round_trips_through_its_own_coercion(registry):
    from pvae.parts import coerce_option

    for name, cls in registry.items():
        for option, default in declared_options(cls).items():
            assert coerce_option(option, default, default) == default, (name, option)
            text = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
            assert coerce_option(option, text, default) == default, (name, option, text)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pvae.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--num-components", 5], "unknown option 'num_components'"),
    (["compare", "--configs", "prior=mog,num_component=5", "--epochs", 1],
     "'num_component' \\(did you mean 'num_components'\\?\\)"),
    (["compare", "--configs", "prior=standard", "priro=mog", "--epochs", 1],
     "'priro' \\(did you mean 'prior'\\?\\)"),
    (["compare", "--configs", "prior=mog,num_components=abc", "--epochs", 1],
     "num_components must be a whole number"),
    (["compare", "--priors", "standard", "gauss", "--epochs", 1], "unknown prior 'gauss'"),
    (["compare", "--configs", "prior=standard", "prior=standard,z_dim=50", "--epochs", 1],
     "train the same model"),
])
def test_misspelled_options_fail_at_every_entry_point_before_any_training(tmp_path, args, message):
    done = cli(*args, "--out", tmp_path / "out", "--data-dir", tmp_path / "no-data")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "no-data").exists()


def test_no_public_function_shadows_a_module():
    import importlib
    import types

    import pvae

    for name in pvae.__all__:
        try:
            module = importlib.import_module(f"pvae.{name}")
        except ModuleNotFoundError:
            continue
        assert getattr(pvae, name) is module, name
    import pvae.evaluate as ev
    assert isinstance(ev, types.ModuleType) and callable(ev.evaluate) and callable(ev.log_likelihood)


LAYERS = ["errors", "parts", "nets", "files", "distributed", "state", "weights", "diagnostics",
          "localfit", "recipes", "priors", "likelihoods", "guides", "hierarchy", "vae",
          "checkpoint", "objectives", "hmc", "ais", "evaluate", "amortization", "data",
          "datasets", "train", "plotting", "experiment", "compare", "cli"]


def test_modules_import_only_downward_and_no_private_names():
    import ast

    files = {p.stem: p for p in (REPO / "pvae").glob("*.py") if p.stem != "__init__"}
    assert set(files) == set(LAYERS), set(files) ^ set(LAYERS)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 1):
                continue
            targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            for target in targets:
                assert LAYERS.index(target) < LAYERS.index(name), f"{name} imports {target}"
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{name} imports {private} from {targets}"
