"""The VAE owns a frozen configuration; every part declares its options; misspellings fail."""
import dataclasses
import re
import subprocess
import sys

import pytest

from conftest import REPO
from pvae import GUIDES, LIKELIHOODS, PRIORS
from pvae.errors import ConfigError
from pvae.model.parts import declared_options
from pvae.model.vae import VAEConfig, build_vae


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
    (dict(z_dim=0), "z_dim must be at least 1"),
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
    from pvae.checks import coerce_option

    for name, cls in registry.items():
        for option, default in declared_options(cls).items():
            assert coerce_option(option, default, default) == default, (name, option)
            text = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
            assert coerce_option(option, text, default) == default, (name, option, text)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pvae", *map(str, args)],
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
    assert isinstance(ev, types.ModuleType) and callable(ev.importance_sampling)
    assert callable(ev.log_likelihood) and callable(ev.ais_log_likelihood) and callable(ev.bdmc)
    for path in (p for p in (REPO / "pvae").rglob("*.py") if p.stem != "__main__"):  # no module
        # whose main function shares its name
        module = importlib.import_module(".".join(("pvae", *path.relative_to(
            REPO / "pvae").with_suffix("").parts)).replace(".__init__", ""))
        assert not callable(getattr(module, path.stem, None)) or path.stem == "__init__", path


def test_modules_import_only_downward_and_no_private_names():
    """The floors of pvae.LAYERS, checked from every module's own imports."""
    import ast

    import pvae

    floor = {name: i for i, names in enumerate(pvae.LAYERS) for name in names}
    files = [p for p in (REPO / "pvae").rglob("*.py")]
    for path in files:
        parts = path.relative_to(REPO / "pvae").with_suffix("").parts
        top = parts[0]
        assert top in floor or top == "__init__", f"{top} is on no floor of pvae.LAYERS"
        if top == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
                continue
            base = parts[:len(parts) - node.level] if len(parts) > 1 else ()
            target = (*base, *(node.module.split(".") if node.module else ()))
            names = [target] if node.module else [(*base, a.name) for a in node.names]
            for name in names:
                other = name[0] if name else top
                assert floor[other] < floor[top] or other == top or (
                    floor[other] == floor[top] and pvae.LAYERS[floor[top]].index(other)
                    < pvae.LAYERS[floor[top]].index(top)), f"{path.name} imports {name}"
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path} imports {private}"


def test_no_module_or_function_outgrows_the_style():
    import ast

    for path in (REPO / "pvae").rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 320, f"{path} has {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path}:{node.name} has {length} lines"


def _other_value(option, default):
    """A valid value of ``option`` other than its default."""
    if option == "decoder":
        return "conv"
    if isinstance(default, bool):
        return not default
    if isinstance(default, tuple):
        return (16,)
    return default + 1 if isinstance(default, int) else default * 2


def _declared():
    from pvae.model.config import REGISTRIES

    return [(role, name, option, default) for role, registry in REGISTRIES.items()
            for name, cls in sorted(registry.items())
            for option, default in declared_options(cls).items()]


@pytest.mark.parametrize("role, name, option, default", _declared(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_declared_option_reaches_the_part_from_every_entry_point(tmp_path, role, name,
                                                                        option, default):
    """pvae train (its generated flags), pvae compare (its keys) and build_vae all hand a
    part's declared option to that part: a new part is tested by being registered."""
    from pvae import RunConfig
    from pvae.runs.cli import parse
    from pvae.runs.comparison import config_for
    from pvae.runs.flags import flag

    value = _other_value(option, default)
    text = ([flag(option)] if value is True else [f"--no-{flag(option)[2:]}"] if value is False
            else [flag(option), *map(str, value if isinstance(value, tuple) else [value])])
    parsed = parse("pvae train", [f"--{role}", name, *text])
    assert parsed.model.options[option] == value
    compared = config_for(RunConfig(), {role: name, option: value}, tmp_path)
    assert compared.model.options[option] == value
    sizes = dict(z_dim=3, hidden_dims=(16,), num_data=4, **{role: name, option: value})
    vae = build_vae(**sizes)
    part = {"prior": vae.prior, "guide": vae.q, "likelihood": vae.likelihood}[role]
    from pvae.model.config import REGISTRIES

    assert vae.config.options[option] == value and isinstance(part, REGISTRIES[role][name])


def test_every_flag_shows_its_default():
    from pvae.runs.cli import COMMANDS
    from pvae.runs.flags import Parser

    for name, (add_arguments, _) in COMMANDS.items():
        parser = Parser(prog=f"pvae {name}")
        add_arguments(parser)
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert action.help and "default" in action.help, (name, action.dest)


def test_no_line_outgrows_the_style():
    for path in (REPO / "pvae").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert len(line) <= 100, f"{path}:{number} has {len(line)} characters"
