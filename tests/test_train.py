import pyro
import pytest
import torch

from pvae import checkpoint as ckpt
from pvae.data import synthetic
from pvae.errors import CheckpointError, ConfigError, DataError, DivergenceError
from pvae.train import fit, resolve_device
from pvae.vae import build_vae

CONFIG = dict(prior="standard", guide="mlp", likelihood="bernoulli", z_dim=3,
              hidden_dims=[16], x_dim=784, activation="tanh", num_data=None, options={})


def tiny(z_dim=3, seed=0):
    torch.manual_seed(seed)
    return build_vae(z_dim=z_dim, hidden_dims=(16,))


def data():
    x = synthetic(350, seed=0, binary=False)
    return x[:300], torch.bernoulli(x[300:], generator=torch.Generator().manual_seed(1))


def train(out, epochs, resume=False, seed=0, vae=None, **kw):
    x, xt = data()
    vae = vae or tiny()
    result = fit(vae, x, epochs=epochs, batch_size=64, lr=3e-3, test_x=xt, out_dir=out,
                 resume=resume, device="cpu", seed=seed, progress=False, config=CONFIG, **kw)
    return vae, result


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(tmp_path):
    full, full_result = train(tmp_path / "a", epochs=3)
    train(tmp_path / "b", epochs=2)
    pyro.clear_param_store()
    pyro.set_rng_seed(999)  # a new process would start from other RNG states
    resumed, resumed_result = train(tmp_path / "b", epochs=3, resume=True, vae=tiny(seed=5))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed_result.steps == full_result.steps == 15
    assert [r.train_elbo for r in resumed_result.history] == [r.train_elbo for r in full_result.history]
    assert ckpt.load(tmp_path / "b" / "checkpoint.pt")["epoch"] == 3


def test_training_improves_the_test_elbo(tmp_path):
    _, result = train(tmp_path, epochs=4)
    elbos = [r.test_elbo for r in result.history]
    assert elbos[-1] > elbos[0] + 20
    assert all(r.train_elbo < 0 for r in result.history)


def test_beta_warmup_ramps_per_step(tmp_path):
    _, result = train(tmp_path, epochs=3, beta=2.0, beta_warmup_epochs=2)
    # 5 steps per epoch, warm-up over 10 steps: β at the last step of each epoch
    assert [r.beta for r in result.history] == pytest.approx([2.0 * 4 / 10, 2.0 * 9 / 10, 2.0])


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
    payload = ckpt.load(tmp_path / "checkpoint.pt")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_vae(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(tmp_path, epochs=2, resume=True)


def test_truncated_checkpoint_is_named(tmp_path):
    train(tmp_path, epochs=1)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_vae(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tmp_path, epochs=2, resume=True)


def test_incompatible_checkpoint_is_named(tmp_path):
    train(tmp_path, epochs=1)
    other = dict(CONFIG, z_dim=4)
    x, _ = data()
    with pytest.raises(CheckpointError, match="z_dim"):
        fit(tiny(z_dim=4), x, epochs=2, batch_size=64, out_dir=tmp_path, resume=True,
            device="cpu", progress=False, config=other)


def test_a_checkpoint_holds_the_weights_once_and_free_params_in_the_store(tmp_path):
    vae, x = tiny(), synthetic(4, x_dim=784)
    vae.guide(x)  # the guide's pyro.param statements put its weights in the store
    pyro.param("free_offset", torch.tensor(2.5))
    ckpt.save(tmp_path / "c.pt", config=CONFIG, model=vae, optimizer_state={}, epoch=0, step=0,
              history=[], train_seconds=0.0)
    saved = ckpt.load(tmp_path / "c.pt")["param_store"]
    assert set(saved["params"]) == {"free_offset"} and saved["params"]["free_offset"].item() == 2.5
    assert set(saved["constraints"]) == {"free_offset"}


def test_load_vae_rebuilds_the_trained_model(tmp_path):
    vae, _ = train(tmp_path, epochs=1)
    loaded, config = ckpt.load_vae(tmp_path / "checkpoint.pt")
    assert config["z_dim"] == 3
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_unwritable_out_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write to --out"):
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
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_keeps_everything_on_the_device(tmp_path):
    x, xt = data()
    vae = tiny()
    fit(vae, x, epochs=1, batch_size=64, test_x=xt, out_dir=tmp_path, device="cuda", progress=False,
        config=CONFIG)
    assert all(p.is_cuda for p in vae.parameters())
    assert all(t.is_cuda for t in vae.state_dict().values())  # buffers too
    loaded, _ = ckpt.load_vae(tmp_path / "checkpoint.pt", device="cuda")
    assert all(p.is_cuda for p in loaded.parameters())
