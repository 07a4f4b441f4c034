"""Recipes set the schedule: Burda et al.'s decay compressed to a budget, resumed exactly."""
import math

import pyro
import pytest
import torch

from pvae import RunConfig, TrainConfig, build_vae, fit
from pvae.errors import ConfigError
from pvae.training import checkpoint
from pvae.training.recipes import RECIPES, StepSchedule, burda_factor, get_recipe, warmup_epochs


def test_burda_stages_last_3_to_the_i_of_3280_epochs_at_lr_times_10_to_minus_i_over_7():
    total = 3280
    assert sum(3**i for i in range(8)) == total
    start = 0
    for i in range(8):
        end = start + 3**i
        for epoch in (start, (start + end) / 2, end - 1e-6):
            assert burda_factor(epoch / total) == pytest.approx(10 ** (-i / 7)), (i, epoch)
        start = end
    assert burda_factor(1.0) == pytest.approx(0.1) and burda_factor(2.0) == pytest.approx(0.1)


def test_a_budget_compresses_the_schedule_proportionally():
    schedule = StepSchedule("burda", total_steps=3280 * 10)  # a 3,280-epoch run of 10 steps
    assert schedule(0) == 1.0 and schedule(9) == 1.0 and schedule(10) == pytest.approx(10**(-1/7))
    short = StepSchedule("burda", total_steps=328)  # the same run compressed to 1/100
    factors = [short(t) for t in range(328)]
    assert sum(f == pytest.approx(0.1) for f in factors) == 328 - math.ceil(328 * 1093 / 3280)
    assert StepSchedule("constant", 5)(4) == 1.0


def test_recipes_resolve_the_rate_eps_and_warmup():
    burda, tomczak, quick = (get_recipe(n) for n in ("burda2016", "tomczak2018", "quick"))
    assert (burda.lr, burda.adam_eps, burda.lr_schedule) == (1e-3, 1e-4, "burda")
    assert (tomczak.lr, tomczak.pseudo_inputs) == (5e-4, "data")
    assert warmup_epochs(tomczak, 2000, 0) == pytest.approx(100)
    assert warmup_epochs(tomczak, 10, 0) == pytest.approx(0.5)
    assert warmup_epochs(quick, 10, 3) == 3 and warmup_epochs(burda, 10, 0) == 0
    assert set(RECIPES) == {"quick", "burda2016", "tomczak2018"}
    with pytest.raises(ConfigError, match="unknown recipe 'burda'"):
        get_recipe("burda")


@pytest.mark.parametrize("kw, message", [
    (dict(recipe="burda2016", lr=5e-4), "sets the learning rate"),
    (dict(recipe="tomczak2018", beta_warmup_epochs=2), "sets the KL warm-up"),
    (dict(recipe="nope"), "unknown recipe"),
])
def test_a_recipe_refuses_flags_it_sets(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(epochs=4, **kw)


def _run(tmp_path, epochs, resume=False):
    torch.manual_seed(0)
    x = torch.rand(60, 6)
    pyro.set_rng_seed(0)
    vae = build_vae(z_dim=2, hidden_dims=(8,), x_dim=6)
    state = fit(vae, x, epochs=epochs, batch_size=20, recipe="burda2016", schedule_epochs=4,
                out_dir=tmp_path, resume=resume, seed=0, progress=False, device="cpu")
    return vae, state


def test_the_schedule_resumes_exactly(tmp_path):
    straight, s4 = _run(tmp_path / "straight", 4)
    _run(tmp_path / "split", 2)
    resumed, r4 = _run(tmp_path / "split", 4, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lrs = [r.lr for r in s4.history]
    assert lrs == [r.lr for r in r4.history]
    assert lrs[0] < 1e-3 and lrs[-1] == pytest.approx(1e-4) and lrs == sorted(lrs, reverse=True)
    assert r4.scheduler["last_epoch"] == 12 == r4.step
    saved = checkpoint.read(tmp_path / "split" / "checkpoint.pt").train
    assert saved.adam_eps == 1e-4 and saved.schedule_epochs == 4 and saved.horizon == 4


def test_resuming_with_another_schedule_horizon_is_refused(tmp_path):
    _run(tmp_path, 1)
    vae = build_vae(z_dim=2, hidden_dims=(8,), x_dim=6)
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="schedule_epochs"):
        fit(vae, torch.rand(60, 6), epochs=3, batch_size=20, recipe="burda2016",
            schedule_epochs=3, out_dir=tmp_path, resume=True, seed=0, progress=False,
            device="cpu")


def test_vamp_pseudo_inputs_start_at_distinct_training_images():
    vae = build_vae(prior="vamp", z_dim=2, hidden_dims=(8,), x_dim=6, num_pseudo_inputs=4)
    images = torch.rand(10, 6)
    vae.prior.start_at(images, torch.Generator().manual_seed(0))
    u = vae.prior.pseudo_inputs
    matches = [int(torch.isclose(images, row, atol=0.011).all(-1).nonzero()) for row in u]
    assert len(set(matches)) == 4
    # binary images: every pixel starts where hardtanh passes a gradient, so every one learns
    vae.prior.start_at(images.round(), torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((vae.prior.pseudo_inputs * torch.randn(4, 6)).sum(),
                                  vae.prior.raw_pseudo_inputs)
    assert bool((grad != 0).all())
    with pytest.raises(ConfigError, match="at least 4 images"):
        vae.prior.start_at(images[:3])


def test_the_burda_recipe_sets_adams_eps_in_a_run(tmp_path, mnist_dir):
    from pvae.runs.experiment import run

    metrics = run(RunConfig.from_dict(dict(
        data_dir=str(mnist_dir), out=str(tmp_path), epochs=2, train_subset=200, test_subset=20,
        eval_samples=5, hidden_dims=(16,), z_dim=4, device="cpu", progress=False,
        recipe="burda2016", prior="vamp", num_pseudo_inputs=5)))
    lrs = [r["lr"] for r in metrics["history"]]
    assert lrs[0] < 1e-3 and lrs[-1] == pytest.approx(1e-4)
    assert metrics["config"]["recipe"] == "burda2016" and math.isfinite(metrics["test_log_px"])
