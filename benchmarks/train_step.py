"""Step and epoch time of pvae's SVI training against a hand-written PyTorch VAE.

Contenders, all on the same network (encoder MLP -> location and softplus scale, decoder
MLP -> Bernoulli logits) and the same loss (the one-sample Monte Carlo -ELBO summed over
the batch, log N and log Bernoulli terms, no analytic KL), optimised with Adam:

* ``pvae``:       the step ``pvae.training.loop.fit`` runs (``make_step`` with ``make_optimizer``);
* ``pvae-svi``:   Pyro's own ``pyro.infer.SVI`` + ``pyro.optim.Adam`` on a pvae VAE (its
                  model and guide state their weights with ``pyro.param``); the contender
                  ``pvae-slow`` (``fit(fast=False)``) of earlier versions ran this same update;
* ``pyro``:       a plain Pyro model/guide in the style of Pyro's VAE example
                  (``pyro.module`` + ``Trace_ELBO`` + ``pyro.optim.Adam``);
* ``torch``:      hand-written PyTorch (``rsample`` by hand, BCE-with-logits,
                  ``torch.optim.Adam`` with its defaults); every ratio is relative to it;
* ``numpyro``:    the same network and loss in NumPyro with a jitted ``SVI.update``
                  (``numpyro_step.py``), when a Python with jax and numpyro is found;
* opt-in with ``--contenders``: ``torch-compiled`` (the hand-written loss under
  ``torch.compile``) and ``pvae-compiled`` (pvae's objective under ``torch.compile``).

They run in the same process, interleaved (A B C, B C A, C A B, ...: the order rotates so
that no contender always follows the same one) after a warm-up; each round times
``--steps`` consecutive steps of each after one untimed step, and a contender's ratio is
the median over rounds of its time divided by ``torch``'s time in the same round (robust
to the machine's load drifting between rounds). Times are the process's CPU time by
default (``--clock wall`` for elapsed time): with one thread they equal elapsed time on
an idle machine and are disturbed far less by other programs. NumPyro runs in a child
process that waits for its turn in the same rotation. Memory (largest batch size only) is the peak resident set
size (``ru_maxrss``, not tracemalloc, which does not see torch's allocator) of a fresh
process that imports everything, builds one contender and takes 20 steps, and its growth
over the peak before the first step (0 when the steps never exceed the import-time peak).

    python benchmarks/train_step.py            # a few minutes
    python benchmarks/train_step.py --quick    # about a minute
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
NETS = {
    "default": dict(hidden_dims=(200, 200), activation="tanh", z_dim=50),
    "pyro-example": dict(hidden_dims=(400,), activation="softplus", z_dim=50),
}
LOG_2PI = math.log(2 * math.pi)
X_DIM = 784


def mlp(sizes, activation):
    act = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}[activation]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class TorchVAE(nn.Module):
    """The hand-written reference: no Pyro, log densities written out."""

    def __init__(self, hidden_dims, activation, z_dim):
        super().__init__()
        self.encoder = mlp([X_DIM, *hidden_dims, 2 * z_dim], activation)
        self.decoder = mlp([z_dim, *hidden_dims[::-1], X_DIM], activation)

    def loss(self, x):
        """-Σ_b [log p(x_b|z_b) + log N(z_b; 0, I) − log N(z_b; μ_b, σ_b²)], z_b = μ_b + σ_b·ε_b."""
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-5
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        log_pz = -0.5 * (z.pow(2).sum() + z.numel() * LOG_2PI)
        log_qz = -0.5 * (eps.pow(2).sum() + eps.numel() * LOG_2PI) - scale.log().sum()
        return -(log_px + log_pz - log_qz)


def torch_contender(net, lr, compiled=False):
    """The hand-written step; ``compiled``: its loss (forward and backward) under ``torch.compile``."""
    model = TorchVAE(**net)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.compile(model.loss) if compiled else model.loss

    def step(x):
        loss = loss_fn(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def pvae_contender(net, lr, compiled=False):
    """Exactly the per-step call of ``pvae.training.loop.fit``, with validation off as fit has it.

    ``compiled``: the objective's ``differentiable_loss`` under ``torch.compile`` instead
    (an experiment: Dynamo splits Pyro's handler stack into several graphs).
    """
    import pyro

    from pvae.infer.objectives import make_loss
    from pvae.model.vae import build_vae
    from pvae.training.step import make_optimizer, make_step

    vae = build_vae(**net)
    objective = make_loss("elbo", 1)
    if compiled:
        objective.differentiable_loss = torch.compile(objective.differentiable_loss)
    step = make_step(vae, objective, make_optimizer(vae, lr))

    def run(x):
        with pyro.validation_enabled(False):
            return step(x)

    return run


def pvae_svi_contender(net, lr):
    """Pyro's SVI on a pvae VAE: ``SVI(vae.model, vae.guide, pyro.optim.Adam, objective).step``.

    Outside ``vae.direct_params()`` the model and guide issue one ``pyro.param`` statement
    per weight, so SVI finds the VAE's parameters and ``pyro.optim.Adam`` keeps one Adam per
    parameter (the update ``fit(fast=False)`` ran before pvae had one training path).
    """
    import pyro
    from pyro.infer import SVI

    from pvae.infer.objectives import make_loss
    from pvae.model.vae import build_vae

    vae = build_vae(**net)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), loss=make_loss("elbo", 1))

    def run(x):
        with pyro.validation_enabled(False):
            return svi.step(x)

    return run


def pyro_contender(net, lr):
    """A straightforward Pyro VAE in the style of Pyro's examples/vae/vae.py."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    encoder = mlp([X_DIM, *net["hidden_dims"], 2 * net["z_dim"]], net["activation"])
    decoder = mlp([net["z_dim"], *net["hidden_dims"][::-1], X_DIM], net["activation"])
    z_dim = net["z_dim"]

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).chunk(2, dim=-1)
            pyro.sample("latent", dist.Normal(loc, F.softplus(raw) + 1e-5).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=Trace_ELBO())

    def run(x):
        with pyro.validation_enabled(False):
            return svi.step(x)

    return run


BUILDERS = {
    "pvae": pvae_contender,
    "pvae-svi": pvae_svi_contender,
    "pyro": pyro_contender,
    "torch": torch_contender,
    # opt-in (--contenders): what whole-loss compilation buys, hand-written and through Pyro
    "torch-compiled": lambda net, lr: torch_contender(net, lr, compiled=True),
    "pvae-compiled": lambda net, lr: pvae_contender(net, lr, compiled=True),
}


def batches(batch_size, count=8, seed=0):
    """``count`` binarized batches drawn from a fixed grayscale pool (data cost excluded)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(batch_size, X_DIM, generator=g)
    return [torch.bernoulli(pool, generator=g) for _ in range(count)]


class NumPyroChild:
    """``numpyro_step.py --serve`` in another Python: one line in, one step time out."""

    def __init__(self, python, net, batch_size, steps, lr, threads, clock_name):
        env = dict(os.environ, XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                   f" intra_op_parallelism_threads={threads}", JAX_PLATFORMS="cpu")
        cmd = [python, str(HERE / "numpyro_step.py"), "--serve", "--batch-size", str(batch_size),
               "--steps", str(steps), "--lr", str(lr), "--z-dim", str(net["z_dim"]), "--clock", clock_name,
               "--activation", net["activation"], "--hidden-dims", *map(str, net["hidden_dims"])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"numpyro_step.py did not start: {ready!r}")

    def time_steps(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


def find_numpyro_python(arg):
    """The Python to run NumPyro with: ``--numpyro-python``, else this one if it has jax."""
    if arg == "none":
        return None
    candidates = [arg] if arg else [sys.executable]
    for python in candidates:
        if python and shutil.which(python) or (python and Path(python).exists()):
            ok = subprocess.run([python, "-c", "import jax, numpyro"], capture_output=True)
            if ok.returncode == 0:
                return python
    return None


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def time_round(step, xs, steps):
    """Seconds per step over ``steps`` steps, after one untimed step that warms the caches."""
    step(xs[-1])
    tic = clock()
    for i in range(steps):
        step(xs[i % len(xs)])
    return (clock() - tic) / steps


def bench_steps(net_name, batch_size, args, numpyro_python):
    net = NETS[net_name]
    xs = batches(batch_size)
    steps = {}
    pyro.clear_param_store()  # the previous setting's VAEs used the same parameter names
    for name in args.contenders:
        torch.manual_seed(0)
        steps[name] = BUILDERS[name](net, args.lr)
    for name, step in steps.items():
        for i in range(args.warmup):
            step(xs[i % len(xs)])
    child = None
    if numpyro_python:
        child = NumPyroChild(numpyro_python, net, batch_size, args.steps, args.lr, args.threads,
                             args.clock)
    times = {name: [] for name in [*steps, *(["numpyro"] if child else [])]}
    try:
        order = list(times)
        for r in range(args.rounds):
            # rotate who goes first, so that no contender always follows the same one (the
            # one before it leaves the caches full of its own data)
            for name in order[r % len(order):] + order[:r % len(order)]:
                times[name].append(child.time_steps() if name == "numpyro"
                                   else time_round(steps[name], xs, args.steps))
    finally:
        if child:
            child.close()
    rows = []
    for name, ts in times.items():
        ratios = [t / r for t, r in zip(ts, times["torch"])]
        rows.append(dict(net=net_name, batch=batch_size, contender=name,
                         median_ms=1e3 * statistics.median(ts), ratio=statistics.median(ratios),
                         ratio_min=min(ratios), ratio_max=max(ratios)))
    return rows


def memory_child(contender, net_name, batch_size, lr, threads):
    """Run in a fresh process: peak RSS increase (MiB) over 20 steps of one contender."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step = BUILDERS[contender](NETS[net_name], lr)
    xs = batches(batch_size, count=2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(20):
        step(xs[i % 2])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mib": (peak - before) / 1024, "peak_mib": peak / 1024}))


def bench_memory(contender, net_name, batch_size, args):
    cmd = [sys.executable, __file__, "--memory-child", contender, net_name, str(batch_size),
           "--lr", str(args.lr), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def hand_written_epoch(train_x, batch_size, lr, net, seed):
    """One epoch of the hand-written VAE: shuffle, gather, binarize, step; returns seconds."""
    torch.manual_seed(seed)
    step = torch_contender(net, lr)
    tic = clock()
    perm = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))
    total = 0.0
    for start in range(0, train_x.shape[0], batch_size):
        xb = torch.bernoulli(train_x.index_select(0, perm[start:start + batch_size]))
        total += step(xb)
    return clock() - tic, -total / train_x.shape[0]


def pvae_epoch(train_x, batch_size, lr, net, seed):
    """One epoch through ``pvae.training.loop.fit`` (input checks and data loading included)."""
    from pvae.model.vae import build_vae
    from pvae.training.loop import fit

    torch.manual_seed(seed)
    vae = build_vae(**net)
    tic = clock()
    result = fit(vae, train_x, epochs=1, batch_size=batch_size, lr=lr, device="cpu", seed=seed,
                 progress=False)
    seconds = clock() - tic
    return seconds, result.history[-1].train_elbo


def bench_epochs(args):
    from pvae.data import load_mnist

    train_x = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset).train_x
    net = NETS["default"]
    times = {"pvae": [], "torch": []}
    elbos = {"pvae": [], "torch": []}
    for r in range(args.epoch_rounds):
        for name, fn in (("pvae", pvae_epoch), ("torch", hand_written_epoch)):
            seconds, elbo = fn(train_x, args.epoch_batch_size, args.lr, net, seed=r)
            times[name].append(seconds)
            elbos[name].append(elbo)
    ratios = [a / b for a, b in zip(times["pvae"], times["torch"])]
    return dict(n=train_x.shape[0], batch=args.epoch_batch_size, pvae_s=statistics.median(times["pvae"]),
                torch_s=statistics.median(times["torch"]), ratio=statistics.median(ratios),
                pvae_elbo=statistics.median(elbos["pvae"]), torch_elbo=statistics.median(elbos["torch"]))


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    import pyro

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, pyro {pyro.__version__}, "
            f"python {platform.python_version()}, torch threads {torch.get_num_threads()}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["default", "pyro-example"])
    p.add_argument("--contenders", nargs="+", choices=sorted(BUILDERS),
                   default=["pvae", "pvae-svi", "pyro", "torch"])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per setting")
    p.add_argument("--steps", type=int, default=10, help="timed steps per contender per round")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps per contender first")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch (and XLA) intra-op threads; 1 by default because OpenMP threads "
                        "spin badly on a shared machine")
    p.add_argument("--numpyro-python", default="",
                   help="a Python with jax and numpyro (default: this one if it has them; 'none' to skip)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="cpu (default): the process's CPU time, which other programs' load "
                        "disturbs far less than elapsed time; wall: elapsed time")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--no-epoch", action="store_true", help="skip the MNIST epoch comparison")
    p.add_argument("--data-dir", default=str(HERE.parent / "data"))
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--epoch-batch-size", type=int, default=128)
    p.add_argument("--epoch-rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="about a minute: batch 128 only, fewer rounds, small epoch, no memory")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.rounds, args.steps, args.warmup = [128], 7, 8, 8
        args.train_subset, args.epoch_rounds, args.no_memory = 4000, 1, True
    if "torch" not in args.contenders:
        args.contenders.append("torch")
    return args


def main(argv=None):
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    if args.memory_child:
        contender, net_name, batch = args.memory_child
        memory_child(contender, net_name, int(batch), args.lr, args.threads)
        return 0
    numpyro_python = find_numpyro_python(args.numpyro_python)
    print(machine())
    print(f"numpyro: {'run with ' + numpyro_python if numpyro_python else 'not available (skipped)'}")
    print(f"{args.clock} time; {args.rounds} interleaved rounds x {args.steps} steps after "
          f"{args.warmup} warm-up steps; "
          "ratio = median over rounds of (time / torch's time in the same round) [min, max]\n")
    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items()}, "steps": [],
               "memory": [], "epoch": None}
    print(f"{'net':<13}{'batch':>6}  {'contender':<15}{'ms/step':>9}{'ratio':>7}  {'[min, max]':<14}"
          f"{'' if args.no_memory else 'peak RSS MiB (+steps)':>22}")
    for net_name in args.nets:
        for batch_size in args.batch_sizes:
            rows = bench_steps(net_name, batch_size, args, numpyro_python)
            for row in rows:
                mem = ""
                if not args.no_memory and row["contender"] in BUILDERS and batch_size == max(args.batch_sizes):
                    m = bench_memory(row["contender"], net_name, batch_size, args)
                    row["rss_peak_mib"], row["rss_delta_mib"] = m["peak_mib"], m["delta_mib"]
                    mem = f"{m['peak_mib']:7.0f} (+{m['delta_mib']:.0f})"
                print(f"{net_name:<13}{batch_size:>6}  {row['contender']:<15}{row['median_ms']:9.2f}"
                      f"{row['ratio']:7.3f}  [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]{'':<2}{mem}",
                      flush=True)
            results["steps"].extend(rows)
    if not args.no_epoch:
        e = bench_epochs(args)
        results["epoch"] = e
        print(f"\nMNIST epoch ({e['n']} images, batch {e['batch']}, default net, "
              f"{args.epoch_rounds} interleaved rounds): pvae fit {e['pvae_s']:.2f} s, hand-written "
              f"{e['torch_s']:.2f} s, ratio {e['ratio']:.3f}; train ELBO after the epoch "
              f"{e['pvae_elbo']:.1f} vs {e['torch_elbo']:.1f} nats")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
