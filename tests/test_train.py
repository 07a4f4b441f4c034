import subprocess
import sys

import pyro
import pytest
import torch

import pvae
from pvae.training import checkpoint as ckpt
from pvae.data import synthetic
from pvae.errors import CheckpointError, ConfigError, DataError, DivergenceError
from pvae.training.loop import fit, resolve_device
from pvae.model.vae import build_vae

def tiny(z_dim=3, seed=0, **kw):
    torch.manual_seed(seed)
    return build_vae(z_dim=z_dim, hidden_dims=(16,), **kw)


def data():
    x = synthetic(350, seed=0, binary=False)
    return x[:300], torch.bernoulli(x[300:], generator=torch.Generator().manual_seed(1))


def train(out, epochs, resume=False, seed=0, vae=None, **kw):
    x, xt = data()
    vae = vae or tiny()
    result = fit(vae, x, epochs=epochs, batch_size=kw.pop("batch_size", 64), lr=kw.pop("lr", 3e-3),
                 test_x=xt, out_dir=out, resume=resume, device="cpu", seed=seed, progress=False,
                 **kw)
    return vae, result


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(tmp_path):
    full, full_result = train(tmp_path / "a", epochs=3)
    train(tmp_path / "b", epochs=2)
    pyro.clear_param_store()
    pyro.set_rng_seed(999)  # a new process would start from other RNG states
    resumed, resumed_result = train(tmp_path / "b", epochs=3, resume=True, vae=tiny(seed=5))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed_result.step == full_result.step == 15
    assert [r.train_elbo for r in resumed_result.history] == [r.train_elbo for r in full_result.history]
    assert ckpt.read(tmp_path / "b" / "checkpoint.pt").state.epoch == 3


def test_training_improves_the_test_elbo(tmp_path):
    _, result = train(tmp_path, epochs=4)
    elbos = [r.test_elbo for r in result.history]
    assert elbos[-1] > elbos[0] + 20
    assert all(r.train_elbo < 0 for r in result.history)


def test_the_vaes_beta_is_the_one_training_uses(tmp_path):
    vae, result = train(tmp_path, epochs=2, vae=tiny(beta=4.0))
    assert vae.beta == 4.0 and [r.beta for r in result.history] == [4.0, 4.0]
    assert ckpt.read(tmp_path / "checkpoint.pt").config["beta"] == 4.0
    assert pvae.load(tmp_path / "checkpoint.pt").beta == 4.0


def test_beta_warmup_ramps_per_step_up_to_the_vaes_beta(tmp_path):
    vae, result = train(tmp_path, epochs=3, vae=tiny(beta=2.0), beta_warmup_epochs=2)
    # 5 steps per epoch, warm-up over 10 steps: β at the last step of each epoch
    assert [r.beta for r in result.history] == pytest.approx([2.0 * 4 / 10, 2.0 * 9 / 10, 2.0])
    assert vae.beta == 2.0 and vae.kl_weight == 2.0


def test_beta_scales_the_kl_in_training_as_in_the_loss():
    x, _ = data()
    losses = {}
    for beta in (1.0, 4.0):
        pyro.set_rng_seed(0)
        vae = tiny(beta=beta)
        losses[beta] = fit(vae, x, epochs=1, batch_size=300, lr=1e-9, device="cpu", seed=0,
                           progress=False, loss="meanfield").history[0].train_elbo
    # one step at lr ~ 0 with the same draws: -ELBO_β = recon + β·KL, so the β = 4 loss is larger
    assert losses[4.0] < losses[1.0] - 1.0


@pytest.mark.parametrize("change, name", [(dict(lr=0.5), "lr"), (dict(batch_size=32), "batch_size"),
                                          (dict(loss="iwae", num_particles=2), "loss"),
                                          (dict(seed=7), "seed")])
def test_resume_with_changed_training_settings_is_refused(tmp_path, change, name):
    train(tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match=f"cannot resume.*{name}"):
        train(tmp_path, epochs=2, resume=True, vae=tiny(), **change)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_beta_is_refused(tmp_path):
    train(tmp_path, epochs=1, vae=tiny(beta=2.0))
    with pytest.raises(ConfigError, match="beta 1.0 \\(the checkpoint has 2.0\\)"):
        train(tmp_path, epochs=2, resume=True, vae=tiny())


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    train(tmp_path, epochs=2)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*overwrite=True"):
        train(tmp_path, epochs=1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    _, result = train(tmp_path, epochs=1, overwrite=True)
    assert ckpt.read(tmp_path / "checkpoint.pt").state.epoch == 1 == result.epoch


def test_evaluating_during_training_does_not_change_the_trained_weights(tmp_path):
    x, xt = data()
    a, b = tiny(), tiny()
    fit(a, x, epochs=2, batch_size=64, device="cpu", seed=0, progress=False, test_x=xt)
    fit(b, x, epochs=2, batch_size=64, device="cpu", seed=0, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fit_leaves_the_param_store_alone_and_reseeds_only_when_given_a_seed():
    x, _ = data()
    pyro.param("users_own", torch.tensor(3.0))

    def trained(global_seed, seed):
        vae = tiny()
        pyro.set_rng_seed(global_seed)
        fit(vae, x[:128], epochs=1, batch_size=64, device="cpu", progress=False, seed=seed)
        return torch.cat([p.detach().flatten() for p in vae.parameters()])

    assert torch.equal(trained(7, None), trained(7, None))
    assert not torch.equal(trained(7, None), trained(8, None))  # the caller's RNG state was used
    assert torch.equal(trained(7, 5), trained(8, 5))  # seed=5 reseeded the globals
    assert pyro.param("users_own").item() == 3.0


def test_a_second_run_on_one_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path):
    code = ("import sys, time\nfrom pvae.files import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"another pvae run \\(pid {child.pid}\\)"):
            train(tmp_path, epochs=1)
    finally:
        child.kill()
        child.wait()
    (tmp_path / ".checkpoint.pt.leftover.tmp").write_bytes(b"x" * 100)
    train(tmp_path, epochs=1)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("kw, message", [
    (dict(epochs=2.7), "epochs must be a whole number"),
    (dict(batch_size=2.5), "batch_size must be a whole number"),
    (dict(beta_warmup_epochs=float("nan")), "beta_warmup_epochs must be a finite number"),
    (dict(lr=-1.0), "lr must be a finite number > 0"),
    (dict(seed=-1), "seed must be in"),
    (dict(seed=2**32), "seed must be in"),
])
def test_nonsensical_fit_arguments_are_named(kw, message):
    x, _ = data()
    args = dict(epochs=1, batch_size=64)
    args.update(kw)
    with pytest.raises(ConfigError, match=message):
        fit(tiny(), x, device="cpu", progress=False, **args)


def test_an_empty_training_or_test_set_is_named():
    x, xt = data()
    with pytest.raises(DataError, match="training data is empty"):
        fit(tiny(), torch.zeros(0, 784), epochs=1, device="cpu", progress=False)
    with pytest.raises(DataError, match="test data is empty"):
        fit(tiny(), x, test_x=xt[:0], epochs=1, device="cpu", progress=False)


@pytest.mark.parametrize("convert", [lambda b: b.long(), lambda b: b.bool(), lambda b: b.to(torch.uint8),
                                     lambda b: b.double(), lambda b: b.half()])
def test_the_dtypes_users_have_train_like_float32(convert):
    x, _ = data()
    binary = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    results = []
    for batch in (binary, convert(binary)):
        vae = tiny()
        results.append(fit(vae, batch, epochs=1, batch_size=100, device="cpu", progress=False,
                           seed=0).history[0].train_elbo)
    assert results[0] == results[1]


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    vae = tiny()
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 8 else output

    vae.likelihood.decoder.register_forward_hook(poison)
    with pytest.raises(DivergenceError, match="epoch 2.*last good checkpoint is kept"):
        train(tmp_path, epochs=3, vae=vae)
    saved = ckpt.read(tmp_path / "checkpoint.pt")
    assert saved.state.epoch == 1
    assert all(torch.isfinite(v).all() for v in saved.weights.values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a pvae checkpoint"):
        pvae.load(path)
    with pytest.raises(CheckpointError, match="not a pvae checkpoint"):
        train(tmp_path, epochs=2, resume=True)


def test_truncated_checkpoint_is_named(tmp_path):
    train(tmp_path, epochs=1)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        pvae.load(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tmp_path, epochs=2, resume=True)


def test_incompatible_checkpoint_is_named(tmp_path):
    train(tmp_path, epochs=1)
    x, _ = data()
    with pytest.raises(CheckpointError, match="z_dim: checkpoint 3 vs now 4"):
        fit(tiny(z_dim=4), x, epochs=2, batch_size=64, out_dir=tmp_path, resume=True,
            device="cpu", progress=False)


def test_load_rebuilds_the_trained_model(tmp_path):
    vae, _ = train(tmp_path, epochs=1)
    loaded = pvae.load(tmp_path / "checkpoint.pt")
    assert loaded.config == vae.config and loaded.config.z_dim == 3
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_unwritable_out_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write to"):
        train(blocker / "out", epochs=1)


@pytest.mark.parametrize("bad, message", [
    (lambda x: x * 255, r"\[0, 1\]"),
    (lambda x: x[:, :700], "shape"),
    (lambda x: torch.where(torch.arange(784) == 3, float("nan"), x), "NaN"),
    (lambda x: torch.where(torch.arange(784) == 3, float("-inf"), x), r"got values in \[-inf, "),
])
def test_bad_training_data_is_named(tmp_path, bad, message):
    x, _ = data()
    with pytest.raises(DataError, match=message):
        fit(tiny(), bad(x), epochs=1, batch_size=64, device="cpu", progress=False)


def test_bad_test_data_is_named():
    x, _ = data()
    with pytest.raises(DataError, match="binary"):
        fit(tiny(), x, epochs=1, test_x=x[:10], device="cpu", progress=False)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_keeps_everything_on_the_device(tmp_path):
    x, xt = data()
    vae = tiny()
    fit(vae, x, epochs=1, batch_size=64, test_x=xt, out_dir=tmp_path, device="cuda", progress=False)
    assert all(p.is_cuda for p in vae.parameters())
    assert all(t.is_cuda for t in vae.state_dict().values())  # buffers too
    loaded = pvae.load(tmp_path / "checkpoint.pt", device="cuda")
    assert all(p.is_cuda for p in loaded.parameters())


def test_each_epoch_records_its_cpu_seconds_and_old_histories_sum_to_none():
    from pvae.training.state import EpochRecord, train_cpu_seconds

    x = synthetic(64, 12, seed=0)
    vae = build_vae(z_dim=2, hidden_dims=(8,), x_dim=12)
    state = fit(vae, x, epochs=2, batch_size=32, progress=False, device="cpu", seed=0)
    times = [r.cpu_seconds for r in state.history]
    assert all(t > 0 for t in times) and train_cpu_seconds(state.history) == pytest.approx(sum(times))
    old = EpochRecord(1, 2, 1.0, -5.0, None, 0.1)  # a checkpoint written before the field
    assert train_cpu_seconds([old, *state.history]) is None
