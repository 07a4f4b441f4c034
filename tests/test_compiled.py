"""The compiled step (--compile) computes Trace_ELBO's, TraceMeanField_ELBO's and IWAE's loss and
gradients: the plain program over every registered part, torch.compile's whole graph over each
part, the CUDA-graph route on a CPU (all but the capture), fit and its resume."""
import logging

import pyro
import pytest
import torch

from pvae.data import synthetic
from pvae.errors import ConfigError
from pvae.infer.objectives import make_loss
from pvae.infer.sites import SITE_LOSSES, analytic_sites, vectorized
from pvae.model.vae import build_vae
from pvae.training.compiled import CompiledStep
from pvae.training.loop import fit
from pvae.training.step import make_capturable, make_optimizer, make_step
from reads import Reads
from test_registry import COMBOS, N, _build, _data

OBJECTIVES = [("elbo", 1), ("elbo", 2), ("meanfield", 1), ("meanfield", 2), ("iwae", 3)]


def _args(vae, likelihood):
    x = _data(likelihood)
    return (x,) if vae.amortized else (x, torch.arange(N))


def _pyro_loss(vae, objective, args):
    with vae.direct_params():
        loss = objective.differentiable_loss(vae.model, vae.guide, *args)
    return loss, torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)


def _plain_loss(vae, name, k, args, fn=None):
    scale = torch.tensor(vae.kl_weight * (1.0 if vae.amortized else vae.num_data / N))

    def loss(*call):
        guide, model = vae.plain_sites(*call, latent_scale=scale,
                                       particles=k if vectorized(name, k) else None)
        extra = {"analytic": analytic_sites(model, guide)} if name == "meanfield" else {}
        return SITE_LOSSES[name](model, guide, k, **extra)

    value = (fn or (lambda f: f))(loss)(*args)
    return value, torch.autograd.grad(value, list(vae.parameters()), allow_unused=True)


def _assert_same(a, b, rtol=2e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_b.detach(), loss_a.detach(), rtol=rtol, atol=1e-4)
    for ga, gb in zip(grads_a, grads_b):
        if ga is None or gb is None:
            assert ga is None and gb is None or float((ga if gb is None else gb).abs().max()) == 0
        else:
            torch.testing.assert_close(gb, ga, rtol=rtol, atol=1e-5 * (1 + float(ga.abs().max())))


@pytest.mark.parametrize("prior,guide,likelihood", COMBOS)
def test_plain_loss_and_gradients_are_pyros_for_every_part_and_objective(prior, guide,
                                                                         likelihood):
    """For the same draws, at β_t = 1, 0 (masked) and 0.4, with N/B for the local guide."""
    pyro.set_rng_seed(1)
    vae = _build(prior, guide, likelihood)
    args = _args(vae, likelihood)
    with pyro.validation_enabled(False):
        for name, k in OBJECTIVES:
            objective = make_loss(name, k)
            for fraction in (1.0, 0.0, 0.4):
                with vae.warmup(fraction):
                    if name != "iwae" and k > 1:  # Trace_ELBO's first call guesses its plates
                        _pyro_loss(vae, objective, args)
                    pyro.set_rng_seed(7)
                    expected = _pyro_loss(vae, objective, args)
                    pyro.set_rng_seed(7)
                    _assert_same(expected, _plain_loss(vae, name, k, args))


WHOLE = sorted({("standard", "mlp", "bernoulli", "elbo", 1), ("standard", "mlp", "bernoulli",
                "meanfield", 2), ("standard", "mlp", "bernoulli", "iwae", 3)} | {
    (p, g, lik, "elbo", 1) for p, g, lik in COMBOS if g != "semi" and
    [p == "standard", g == "mlp", lik == "bernoulli"].count(False) == 1})


@pytest.mark.parametrize("prior,guide,likelihood,name,k", WHOLE)
def test_torch_compile_takes_every_part_whole(prior, guide, likelihood, name, k):
    """``fullgraph=True`` (one graph, no break) with each prior, guide, likelihood, objective."""
    torch._dynamo.reset()
    vae = _build(prior, guide, likelihood)
    args = _args(vae, likelihood)
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(3)
        expected = _plain_loss(vae, name, k, args)
        pyro.set_rng_seed(3)
        whole = _plain_loss(vae, name, k, args, lambda f: torch.compile(
            f, fullgraph=True, dynamic=False, backend="aot_eager"))
    _assert_same(expected, whole, rtol=1e-6)


@pytest.mark.parametrize("name, k", OBJECTIVES)
def test_two_stochastic_layers_compile_whole_to_pyros_numbers(name, k):
    torch._dynamo.reset()
    vae = build_vae(z_dim=3, hidden_dims=(8,), stochastic_layers=2, top_z_dim=2,
                    top_hidden_dims=(4,))
    x = _data("bernoulli")
    objective = make_loss(name, k)
    with pyro.validation_enabled(False), vae.warmup(0.5):
        if name != "iwae":
            _pyro_loss(vae, objective, (x,))
        losses = []
        for fn in (None, lambda f: torch.compile(f, fullgraph=True, backend="aot_eager")):
            pyro.set_rng_seed(4)
            losses.append(_pyro_loss(vae, objective, (x,)) if fn is None
                          else _plain_loss(vae, name, k, (x,), fn))
    _assert_same(*losses)


def _steps(kind, loss="elbo", k=1, guide="mlp", steps=25):
    """Losses and final parameters of ``steps`` steps on ragged batches, a β warm-up and a
    decaying learning rate: ``kind`` pyro (make_step), plain, or graphs (the CUDA-graph route)."""
    torch.manual_seed(0)
    x = synthetic(256, seed=0)
    xs = [(x[i:i + 64], torch.arange(i, i + 64)) for i in range(0, 256, 64)]
    xs.append((x[:20], torch.arange(20)))
    vae = build_vae(z_dim=3, hidden_dims=(16,), guide=guide,
                    num_data=256 if guide == "local" else None)
    objective = make_loss(loss, k)
    opt = make_optimizer(vae, 3e-3, capturable=kind == "graphs")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s / 10))
    step = make_step(vae, objective, opt) if kind == "pyro" else CompiledStep(
        vae, loss, k, objective, opt, backend=None, graphs=kind == "graphs")
    pyro.set_rng_seed(1)
    out = []
    with pyro.validation_enabled(False):
        for i in range(steps):
            xb, idx = xs[i % len(xs)]
            with vae.warmup(min(1.0, i / 10)):
                out.append(float(step(*((xb,) if vae.amortized else (xb, idx)))))
            schedule.step()
    return torch.tensor(out, dtype=torch.float64), [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("loss, k, guide", [("elbo", 1, "mlp"), ("iwae", 3, "mlp"),
                                            ("meanfield", 1, "local"), ("elbo", 1, "iaf")])
def test_plain_and_graph_steps_train_as_the_pyro_step(loss, k, guide):
    """25 steps: the plain step and the CUDA-graph route (static buffers, tensor learning rate,
    capturable Adam, device-side β; replayed by re-running its body on a CPU) give the Pyro
    step's losses and parameters."""
    pyro_losses, pyro_params = _steps("pyro", loss, k, guide)
    for kind in ("plain", "graphs"):
        losses, params = _steps(kind, loss, k, guide)
        torch.testing.assert_close(losses, pyro_losses, rtol=2e-6, atol=0)
        for a, b in zip(params, pyro_params):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert pyro_losses[-5:].mean() < pyro_losses[:5].mean() - 50  # it trained


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_a_resumed_optimiser_is_made_capturable_with_a_rate_the_schedule_fills():
    """A CUDA graph reads the rate from the device: a checkpoint's float rate (an uncompiled
    run's) becomes a tensor again, and the schedule fills that tensor in place."""
    vae = build_vae(z_dim=3, hidden_dims=(4,))
    saved = make_optimizer(vae, 2e-3).state_dict()
    opt = make_optimizer(vae, 1e-3, capturable=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 2e-3 and not opt.param_groups[0]["capturable"]
    make_capturable(opt, vae.device)
    rate = opt.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor) and opt.param_groups[0]["capturable"]
    schedule.step()
    assert opt.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(5e-4)


def test_a_replaced_guide_takes_the_pyro_step_and_a_foreign_param_is_refused(caplog):
    vae = build_vae(z_dim=3, hidden_dims=(16,))
    x = synthetic(64, seed=0)
    own = vae.guide
    vae.guide = lambda x_, idx=None: own(x_, idx)
    opt = make_optimizer(vae, 1e-3)
    with caplog.at_level(logging.WARNING):
        step = CompiledStep(vae, "elbo", 1, make_loss("elbo"), opt, backend=None)
        step(x)
    assert "replaced" in caplog.text and step.fallback is not None
    vae = build_vae(z_dim=3, hidden_dims=(16,))
    prior = vae.prior.forward
    vae.prior.forward = lambda: (pyro.param("free", torch.zeros(())), prior())[1]
    step = CompiledStep(vae, "elbo", 1, make_loss("elbo"), make_optimizer(vae, 1e-3),
                        backend=None)
    with pytest.raises(ConfigError, match="pyro.param 'free'"):
        step(x)


def test_the_semi_amortized_guide_falls_back_to_the_uncompiled_plain_step(caplog):
    """Its refinement is an inner optimisation loop: one logged line, then the same numbers."""
    torch._dynamo.reset()
    x = synthetic(64, seed=0)
    results = []
    for backend in ("eager", None):
        torch.manual_seed(0)
        vae = build_vae(z_dim=3, hidden_dims=(16,), guide="semi", refine_steps=2)
        step = CompiledStep(vae, "elbo", 1, make_loss("elbo"), make_optimizer(vae, 1e-3),
                            backend=backend)
        pyro.set_rng_seed(2)
        with caplog.at_level(logging.WARNING), pyro.validation_enabled(False):
            results.append([float(step(x)) for _ in range(3)])
    assert "cannot take this step whole" in caplog.text
    assert results[0] == results[1]


def test_the_compiled_training_loop_reads_nothing_back_per_step(monkeypatch):
    """An epoch of 10 and one of 20 steps read the device equally often: per epoch, not step."""
    import pvae.training.loop as loop

    monkeypatch.setattr(loop, "CompiledStep", lambda *a, **k: CompiledStep(*a, **k,
                                                                           backend=None))
    counts = {}
    for compiled in (True, False):
        for n in (640, 1280):
            x = synthetic(n, seed=0)
            vae = build_vae(z_dim=3, hidden_dims=(16,))
            with Reads() as reads:
                fit(vae, x, epochs=1, batch_size=64, device="cpu", seed=0, progress=False,
                    compile=compiled, beta_warmup_epochs=0.5)
            counts[compiled, n] = reads.count
    assert counts[True, 640] == counts[True, 1280]
    assert counts[False, 1280] > counts[False, 640]  # Pyro's Trace_ELBO reads its loss per step


@pytest.mark.slow
def test_fit_compiled_by_inductor_trains_as_fit_and_resumes_exactly(tmp_path):
    """torch.compile (inductor, C++): a β warm-up and a ragged last batch; the same ELBOs as the
    uncompiled fit to float32 rounding, and an interrupted compiled run resumes bitwise."""
    x = synthetic(300, seed=0, binary=False)
    runs = {}
    for name, compiled, epochs, resume in [("eager", False, 3, False), ("full", True, 3, False),
                                           ("cut", True, 1, False), ("cut", True, 3, True)]:
        torch.manual_seed(5 if resume else 0)
        vae = build_vae(z_dim=3, hidden_dims=(16,))
        state = fit(vae, x, epochs=epochs, batch_size=64, lr=3e-3, out_dir=tmp_path / name,
                    resume=resume, device="cpu", seed=0, progress=False, compile=compiled,
                    beta_warmup_epochs=1.5, schedule_epochs=3)
        runs[name] = ([r.train_elbo for r in state.history], dict(vae.named_parameters()))
    eager, full = runs["eager"], runs["full"]
    torch.testing.assert_close(torch.tensor(full[0]), torch.tensor(eager[0]), rtol=1e-5, atol=0)
    for key, value in full[1].items():
        torch.testing.assert_close(value, eager[1][key], rtol=0, atol=1e-4)
        assert torch.equal(value, runs["cut"][1][key]), key
    assert runs["cut"][0] == full[0]


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("bad_step", [30, 75])
def test_a_diverged_compiled_run_names_the_first_bad_step_and_keeps_the_last_checkpoint(
        monkeypatch, tmp_path, bad_step):
    """Epoch 2's steps 30 (before the first read at step 50) and 75 (after it, read at the
    epoch's end): the error names that step; the epoch-1 checkpoint stays finite."""
    import pvae.training.checkpoint as ckpt
    import pvae.training.loop as loop
    from pvae.errors import DivergenceError

    monkeypatch.setattr(loop, "CompiledStep", lambda *a, **k: CompiledStep(*a, **k,
                                                                           backend=None))
    vae, calls = build_vae(z_dim=3, hidden_dims=(16,)), {"n": 0}
    steps = 100  # 1,000 examples in batches of 10: 100 steps per epoch, reads at 50 and 100

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > steps + 1 + bad_step else output

    vae.likelihood.decoder.register_forward_hook(poison)
    with pytest.raises(DivergenceError, match=f"epoch 2, step {steps + bad_step}: the loss is "
                                              "nan.*last good checkpoint is kept"):
        fit(vae, synthetic(1000, seed=0), epochs=3, batch_size=10, device="cpu", seed=0,
            progress=False, compile=True, out_dir=tmp_path)
    saved = ckpt.read(tmp_path / "checkpoint.pt")
    assert saved.state.epoch == 1 and saved.state.step == steps
    assert all(torch.isfinite(v).all() for v in saved.weights.values() if v.is_floating_point())
