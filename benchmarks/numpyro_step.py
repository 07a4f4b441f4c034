"""The benchmark's VAE in NumPyro: the same network and loss, one jitted ``SVI.update`` per step.

Needs jax and numpyro (not pvae dependencies). ``train_step.py`` starts it with ``--serve``:
it compiles and warms up, prints ``ready``, then for every ``go`` line on stdin times
``--steps`` steps and prints the mean seconds per step; ``quit`` ends it. Without
``--serve`` it prints one such time and exits.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO

ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "relu": jax.nn.relu}


def init_mlp(key, sizes):
    """Weights U(±1/√fan_in), as torch.nn.Linear initialises them."""
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / a ** 0.5
        params.append((jax.random.uniform(kw, (a, b), minval=-bound, maxval=bound),
                       jax.random.uniform(kb, (b,), minval=-bound, maxval=bound)))
    return params


def mlp(name, init, x, activation):
    for i, (w0, b0) in enumerate(init):
        w = numpyro.param(f"{name}_w{i}", w0)
        b = numpyro.param(f"{name}_b{i}", b0)
        x = x @ w + b
        if i < len(init) - 1:
            x = ACTIVATIONS[activation](x)
    return x


def build(hidden_dims, activation, z_dim, x_dim=784, seed=0):
    ke, kd = jax.random.split(jax.random.PRNGKey(seed))
    enc = init_mlp(ke, [x_dim, *hidden_dims, 2 * z_dim])
    dec = init_mlp(kd, [z_dim, *hidden_dims[::-1], x_dim])

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(z_dim), 1.0).to_event(1))
            logits = mlp("dec", dec, z, activation)
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            out = mlp("enc", enc, x, activation)
            loc, raw = out[:, :z_dim], out[:, z_dim:]
            numpyro.sample("z", dist.Normal(loc, jax.nn.softplus(raw) + 1e-5).to_event(1))

    return model, guide


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200])
    p.add_argument("--activation", default="tanh", choices=sorted(ACTIVATIONS))
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this process's CPU time (all threads); wall: elapsed time")
    args = p.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    model, guide = build(args.hidden_dims, args.activation, args.z_dim)
    key = jax.random.PRNGKey(0)
    pool = jax.random.uniform(key, (args.batch_size, 784))
    xs = [jax.random.bernoulli(jax.random.PRNGKey(i + 1), pool).astype(jnp.float32) for i in range(8)]
    svi = SVI(model, guide, numpyro.optim.Adam(args.lr), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(1), xs[0])
    update = jax.jit(svi.update)

    def run(state, n):
        for i in range(n):
            state, loss = update(state, xs[i % len(xs)])
        jax.block_until_ready(loss)
        return state

    state = run(state, args.warmup)
    if not args.serve:
        tic = clock()
        run(state, args.steps)
        print((clock() - tic) / args.steps)
        return 0
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        state = run(state, 1)  # untimed: warms the caches after the other contenders' turns
        tic = clock()
        state = run(state, args.steps)
        print((clock() - tic) / args.steps, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
