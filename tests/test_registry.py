"""Every prior × guide × likelihood builds, traces, trains one step and round-trips its weights."""
import itertools
import math
from pathlib import Path

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pvae.errors import ConfigError
from pvae.model.guides import GUIDES
from pvae.model.likelihoods import LIKELIHOODS
from pvae.model.priors import PRIORS
from pvae.model.parts import options_taken
from pvae.model.vae import VAEConfig, build_vae

Z, N = 3, 4
SIZES = dict(z_dim=Z, hidden_dims=(8,), x_dim=784, num_data=N)
OPTIONS = dict(num_components=2, num_pseudo_inputs=3, flow_steps=2, rank=2, conv_channels=2,
               refine_steps=1)


def _circular(prior, guide):
    cls = GUIDES[guide]
    return prior == "vamp" and (not cls.amortized or cls.uses_model)


COMBOS = [c for c in itertools.product(sorted(PRIORS), sorted(GUIDES), sorted(LIKELIHOODS))
          if not _circular(c[0], c[1])]


def _build(prior, guide, likelihood):
    taken = options_taken(VAEConfig(prior=prior, guide=guide, likelihood=likelihood).parts())
    return build_vae(prior=prior, guide=guide, likelihood=likelihood, **SIZES,
                     **{k: v for k, v in OPTIONS.items() if k in taken})


def _data(likelihood):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(N, 784, generator=g)
    return torch.bernoulli(x, generator=g) if LIKELIHOODS[likelihood].data_kind == "binary" else x


@pytest.mark.parametrize("prior,guide,likelihood", COMBOS)
def test_combination_traces_steps_and_round_trips(prior, guide, likelihood):
    pyro.set_rng_seed(1)
    vae = _build(prior, guide, likelihood)
    x, idx = _data(likelihood), torch.arange(N)
    vae.check_data(x)

    guide_trace = poutine.trace(vae.guide).get_trace(x, idx)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, idx)
    zq, zp = guide_trace.nodes["z"], model_trace.nodes["z"]
    assert zq["value"].shape == zp["value"].shape == (N, Z)
    assert zq["fn"].event_shape == zp["fn"].event_shape == (Z,)
    assert model_trace.nodes["x"]["fn"].event_shape == (784,)

    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x, idx))

    pyro.set_rng_seed(5)
    before = Trace_ELBO().loss(vae.model, vae.guide, x, idx)
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    fresh = _build(prior, guide, likelihood)
    fresh.load_state_dict(state)
    pyro.set_rng_seed(5)
    after = Trace_ELBO().loss(fresh.model, fresh.guide, x, idx)
    assert math.isfinite(before) and after == before


@pytest.mark.parametrize("guide", [g for g in sorted(GUIDES) if _circular("vamp", g)])
def test_vamp_refuses_guides_it_cannot_mix(guide):
    with pytest.raises(ConfigError, match="VampPrior"):
        build_vae(prior="vamp", guide=guide, **SIZES, num_pseudo_inputs=3)


@pytest.mark.parametrize("kind,registry", [("prior", PRIORS), ("guide", GUIDES),
                                           ("likelihood", LIKELIHOODS)])
def test_unknown_names_list_the_choices(kind, registry):
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nope'.*{sorted(registry)[0]}"):
        build_vae(**{kind: "nope"}, z_dim=2, hidden_dims=(8,), x_dim=6)


def test_registries_hold_the_documented_names():
    assert set(PRIORS) >= {"standard", "learned", "mog", "vamp", "flow"}
    assert set(GUIDES) >= {"mlp", "conv", "lowrank", "iaf"}
    assert set(LIKELIHOODS) >= {"bernoulli", "cbernoulli", "normal"}


# Configurations picked by name and compared: pvae.runs.comparison (runs replaced by fixed metrics).

def test_settings_parse_to_typed_values_and_grids_keep_order():
    from pvae.runs.comparison import grid, parse_setting, setting_name

    s = parse_setting("prior=vamp, num_pseudo_inputs=50,learn_scale=true,beta=0.5")
    assert s == {"prior": "vamp", "num_pseudo_inputs": 50, "learn_scale": True, "beta": 0.5}
    assert setting_name(s) == "prior=vamp,num_pseudo_inputs=50,learn_scale=True,beta=0.5"
    with pytest.raises(ConfigError, match="key=value"):
        parse_setting("prior")
    assert grid(prior=["standard", "vamp"], guide=["mlp", "iaf"], loss=None) == [
        {"prior": "standard", "guide": "mlp"}, {"prior": "standard", "guide": "iaf"},
        {"prior": "vamp", "guide": "mlp"}, {"prior": "vamp", "guide": "iaf"}]


def test_config_for_sends_unknown_keys_to_part_options(tmp_path):
    from pvae import RunConfig
    from pvae.runs.comparison import config_for

    base = RunConfig.from_dict({"epochs": 3, "seed": 4})
    cfg = config_for(base, {"prior": "mog", "guide": "lowrank", "num_components": 5, "z_dim": 8},
                     tmp_path / "a", {"rank": 3})
    assert (cfg.model.prior, cfg.model.z_dim, cfg.train.epochs, cfg.train.seed) == ("mog", 8, 3, 4)
    assert cfg.model.options == {"num_components": 5, "rank": 3}
    assert cfg.out == str(tmp_path / "a")
    other = config_for(base, {"prior": "mog"}, tmp_path / "b", {"rank": 3})
    assert other.model.options == {}  # rank is the lowrank guide's: it does not reach mlp


def _fake_run(per_example):
    import numpy as np

    def run(cfg):
        values = per_example[cfg.model.prior]
        if cfg.model.guide == "mlp":
            np.save(Path(cfg.out) / "test_log_px.npy", np.asarray(values))
        n = len(values)
        mean = float(np.mean(values))
        return {"test_elbo": mean - 5.0, "test_log_px": mean,
                "test_log_px_stderr": float(np.std(values, ddof=1) / np.sqrt(n)),
                "psis_khat_max": 0.4, "train_seconds": 1.0,
                "likelihood_kind": "density" if cfg.model.likelihood == "normal" else "discrete"}
    return run


def test_compare_marks_paired_and_unpaired_improvements(tmp_path, monkeypatch):
    import numpy as np

    import pvae.runs.experiment
    from pvae import RunConfig
    from pvae.runs.comparison import compare

    g = np.random.default_rng(0)
    common = g.normal(-100.0, 10.0, size=50)
    per_example = {"standard": common, "vamp": common + 1.0 + 0.1 * g.normal(size=50),
                   "flow": common + 1.0, "mog": common - 3.0}
    monkeypatch.setattr(pvae.runs.experiment, "run", _fake_run(per_example))
    settings = [{"prior": "standard", "guide": "mlp"}, {"prior": "vamp", "guide": "mlp"},
                {"prior": "flow", "guide": "iaf"}, {"prior": "mog", "guide": "mlp",
                                                     "likelihood": "normal"}]
    for s in settings:
        (tmp_path / "__".join(f"{k}-{v}" for k, v in s.items())).mkdir()
    rows = compare(RunConfig(), settings, tmp_path)
    base, vamp, flow, mog = rows
    assert base.diff == 0.0 and not base.beats_baseline
    assert vamp.paired and vamp.beats_baseline
    d = per_example["vamp"] - common
    assert vamp.diff == pytest.approx(d.mean()) and vamp.diff_stderr == pytest.approx(
        d.std(ddof=1) / np.sqrt(50))
    assert not flow.paired and not flow.beats_baseline
    assert flow.diff_stderr == pytest.approx(np.hypot(base.test_log_px_stderr,
                                                      flow.test_log_px_stderr))
    assert mog.diff is None and not mog.beats_baseline
    table = (tmp_path / "compare.md").read_text()
    assert "**better**" in table.splitlines()[3] and "not comparable" in table
    assert (tmp_path / "compare.csv").read_text().count("\n") == 5
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_compare_keeps_going_past_a_diverged_run(tmp_path, monkeypatch):
    import numpy as np

    import pvae.runs.experiment
    from pvae.runs.comparison import compare
    from pvae import RunConfig
    from pvae.errors import DivergenceError

    values = np.random.default_rng(1).normal(-100.0, 5.0, size=20)
    fake = _fake_run({"standard": values, "flow": values + 2.0})

    def run(cfg):
        if cfg.model.prior == "vamp":
            raise DivergenceError("training diverged at epoch 2, step 9: the loss is nan; kept")
        return fake(cfg)

    monkeypatch.setattr(pvae.runs.experiment, "run", run)
    settings = [{"prior": p, "guide": "mlp"} for p in ("standard", "vamp", "flow")]
    for s in settings:
        (tmp_path / "__".join(f"{k}-{v}" for k, v in s.items())).mkdir()
    base, vamp, flow = compare(RunConfig(), settings, tmp_path)
    assert vamp.error.startswith("training diverged at epoch 2") and vamp.test_log_px is None
    assert flow.beats_baseline and flow.diff == pytest.approx(2.0)
    assert "failed: training diverged at epoch 2" in (tmp_path / "compare.md").read_text()


def _prior(name, z_dim=2):
    torch.manual_seed(3)
    taken = options_taken(VAEConfig(prior=name).parts())
    vae = build_vae(prior=name, z_dim=z_dim, hidden_dims=(8,),
                    **{k: v for k, v in OPTIONS.items() if k in taken})
    with torch.no_grad():  # move learned parameters off their symmetric starting values
        for p in vae.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae.prior


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_is_a_density_that_its_samples_follow(name):
    pz = _prior(name)()
    grid = torch.linspace(-9, 9, 361)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = pz.log_prob(zz).double().exp()
    cell = float(grid[1] - grid[0]) ** 2
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=0.01)
    grid_mean = (density[:, None] * zz.double()).sum(0) * cell
    with torch.no_grad():
        z = pz.sample((20000,))
    se = z.double().std(0) / math.sqrt(z.shape[0])
    assert torch.all((z.double().mean(0) - grid_mean).abs() < 5 * se + 1e-3), (z.mean(0), grid_mean)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_expands_over_the_data_plate(name):
    pz = _prior(name, z_dim=Z)()
    z = torch.randn(5, Z)
    with torch.no_grad():
        expanded = pz.expand((5,))
        assert expanded.batch_shape == (5,) and expanded.event_shape == (Z,)
        assert torch.allclose(expanded.log_prob(z), pz.log_prob(z))


@pytest.mark.parametrize("name", sorted(g for g in GUIDES if GUIDES[g].amortized))
def test_every_amortized_guide_scores_its_own_samples_and_expands(name):
    torch.manual_seed(0)
    vae = _build("standard", name, "bernoulli")
    x = _data("bernoulli")
    with torch.no_grad():
        torch.manual_seed(1)  # the same draws for a guide that refines stochastically
        q = vae.q(x)
        z = q.sample()
        torch.manual_seed(1)
        again = vae.q(x).log_prob(z.clone())  # a fresh distribution: no cached inverse
        assert z.shape == (N, Z) and torch.allclose(q.log_prob(z), again, atol=1e-4)
        assert q.expand((2, N)).log_prob(z).shape == (2, N)
