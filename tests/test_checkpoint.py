"""Checkpoints are data, never code: checked, refused with one CheckpointError, rebuilt exactly."""
import hashlib
import io
import json
import os
import random

import pytest
import torch

import pvae
from pvae.training import checkpoint
from pvae.errors import CheckpointError
from pvae import TrainConfig, fit
from pvae.training.state import TrainState, rng_state
from pvae.model.vae import build_vae

SETTINGS = TrainConfig(batch_size=64, seed=3, binarize=True)


def tiny(**kw):
    torch.manual_seed(0)
    return build_vae(z_dim=3, hidden_dims=(16,), **kw)


def forge(path, payload, fmt=checkpoint.FORMAT):
    """A file with pvae's magic and a valid header (length, SHA-256) around ``payload``."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    blob = buf.getvalue()
    header = json.dumps({"format": fmt, "length": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest()}).encode()
    path.write_bytes(checkpoint.MAGIC + header + b"\n" + blob)
    return path


@pytest.fixture
def saved(tmp_path):
    vae = tiny(prior="mog", num_components=4, beta=2.5)
    state = TrainState(1, 5, (), 0.5, {}, rng_state())
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, vae, state, SETTINGS, {"dataset": "mine.npz"})
    return vae, path


def test_load_rebuilds_config_beta_and_weights(saved):
    vae, path = saved
    loaded = pvae.load(path)
    assert loaded.config == vae.config and loaded.beta == 2.5
    assert loaded.config.options["num_components"] == 4
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    ckpt = checkpoint.read(path)
    assert ckpt.train == SETTINGS and ckpt.state.step == 5 and ckpt.model == vae.config
    assert ckpt.config["dataset"] == "mine.npz" and ckpt.config["beta"] == 2.5


def test_loading_leaves_the_global_rng_and_param_store_alone(saved):
    import pyro

    _, path = saved
    pyro.param("users_own", torch.ones(2))
    before = torch.get_rng_state()
    pvae.load(path)
    assert torch.equal(before, torch.get_rng_state())
    assert "users_own" in pyro.get_param_store()


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    old_style = tmp_path / "old.pt"
    torch.save({"format": "x", "boom": Evil()}, old_style)
    with pytest.raises(CheckpointError, match="not a pvae checkpoint"):
        pvae.load(old_style)
    forged = forge(tmp_path / "forged.pt", {"config": {}, "weights": {}, "state": None,
                                            "boom": Evil()})
    with pytest.raises(CheckpointError, match="cannot be read"):
        pvae.load(forged)
    assert not marker.exists()


def test_a_checkpoint_of_pvae_0_2_loads_for_evaluation_and_is_not_resumed(tmp_path):
    """Format 2: {"vae": configuration with "dataset", "beta", "weights", "train"}."""
    from pvae.errors import CheckpointError

    vae = tiny(prior="mog", num_components=4)
    old = {k: v for k, v in vae.config.to_dict().items() if k != "beta"}
    old["dataset"] = "mnist"
    history = [dict(epoch=1, step=5, beta=2.0, train_elbo=-100.0, test_elbo=None, seconds=1.0)]
    train = {"epoch": 1, "step": 5, "history": history, "train_seconds": 1.0, "optimizer": {},
             "rng": rng_state(), "settings": {"batch_size": 64, "beta": 2.0}}
    path = forge(tmp_path / "checkpoint.pt", {"vae": old, "beta": 2.0,
                                                "weights": vae.state_dict(), "train": train}, 2)
    loaded = pvae.load(path)
    assert loaded.beta == 2.0 and loaded.config.options["num_components"] == 4
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(),
                                                 loaded.state_dict().values()))
    ckpt = checkpoint.read(path)
    assert ckpt.config["dataset"] == "mnist" and ckpt.state.epoch == 1 and ckpt.train is None
    with pytest.raises(CheckpointError, match="format 2.*cannot be resumed"):
        fit(tiny(prior="mog", num_components=4, beta=2.0), torch.zeros(8, 784), epochs=2,
            out_dir=tmp_path, resume=True, device="cpu", progress=False)


def test_a_checkpoint_of_the_previous_format_says_what_it_is(tmp_path):
    path = tmp_path / "v1.pt"
    torch.save({"format": "pvae-checkpoint-1", "config": {}, "model": {}}, path)
    with pytest.raises(CheckpointError, match="pvae 0.1.*can run code"):
        pvae.load(path)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "truncated"),
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "damaged"),
    (lambda raw: raw.replace(b'"format": 3', b'"format": 9'), "format 9"),
    (lambda raw: raw[:20] + b"{not json" + raw[40:], "damaged header"),
    (lambda raw: b"", "not a pvae checkpoint"),
])
def test_damaged_files_are_refused(saved, damage, message):
    _, path = saved
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        pvae.load(path)


def test_a_payload_missing_a_key_is_refused(tmp_path):
    path = forge(tmp_path / "c.pt", {"config": {}, "state": None})
    with pytest.raises(CheckpointError, match="lacks.*weights"):
        pvae.load(path)


def test_fuzz_random_and_bit_flipped_files_all_give_checkpoint_error(saved, tmp_path):
    _, path = saved
    good = path.read_bytes()
    rng = random.Random(0)
    target = tmp_path / "fuzz.pt"
    for i in range(400):
        if i < 200:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 3000)))
            if i % 4 == 0:
                raw = checkpoint.MAGIC + raw
        else:
            raw = bytearray(good)
            for _ in range(20):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            raw = bytes(raw)
        target.write_bytes(raw)
        with pytest.raises(CheckpointError):
            pvae.load(target)


def test_a_vae_of_custom_modules_loads_into_a_vae_built_the_same_way(tmp_path):
    from linear_gaussian import make_problem, make_vae

    W, b, sigma = make_problem()
    vae = make_vae(W, b, sigma)
    vae.beta = 0.5
    checkpoint.save(tmp_path / "c.pt", vae)
    with pytest.raises(CheckpointError, match="custom modules"):
        pvae.load(tmp_path / "c.pt")
    other = make_vae(W, b, sigma)
    assert pvae.load(tmp_path / "c.pt", vae=other).beta == 0.5


def test_weights_for_another_architecture_are_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="does not fit"):
        pvae.load(path, vae=build_vae(z_dim=5, hidden_dims=(16,)))


def test_checkpoint_and_metrics_files_follow_the_umask(tmp_path):
    from pvae.files import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644

