"""The compiled training step (``--compile``) against pvae's eager step, a hand-written PyTorch
VAE (eager and under ``torch.compile``) and NumPyro's jitted step, side by side.

Contenders, on the same network and loss (one-sample Monte Carlo −ELBO summed over the batch,
Bernoulli logits) and Adam:

* ``pvae``:            ``make_step``, the step ``fit`` runs (Pyro's ``Trace_ELBO``, fused Adam);
* ``pvae-compiled``:   ``CompiledStep``, the step ``fit(compile=True)`` runs (the plain program
                       compiled whole by inductor, fused Adam);
* ``torch``:           hand-written eager PyTorch (``train_step.TorchVAE``), ``torch.optim.Adam``;
* ``torch-compiled``:  its loss under ``torch.compile(fullgraph=True)``, the same Adam;
* ``numpyro``:         ``numpyro_step.py`` in a child process (``jax.jit(svi.update)``), when a
                       Python with jax and numpyro is found (``--numpyro-python``).

No contender reads its loss back per step. Settings ``NET:BATCH`` (default: the tiny 784-16-4
net at batch 1, where the framework's own cost shows, and the default and 400-unit nets at 128
and 512). Method (as ``train_step.py``): all contenders built and warmed up in one process, then
interleaved rounds whose order rotates, one untimed step per turn, CPU time of one thread;
ratios are medians over rounds of time / ``torch``'s time in the same round. Also printed:
each compiled contender's compile time (its first call, wall and CPU seconds from a fresh
inductor cache; the compiler runs in this process, ``compile_threads = 1``, and the C++
compiler's CPU time is counted as its children's) and, in a fresh process, one epoch of ``fit``
on MNIST eager and two compiled (the first includes its compilation; the second is steady).
``--quick``: the three settings of the targets, 11 rounds of 15 steps, under 5 minutes on 2
cores.
``--profile`` prints the top operators of ``pvae-compiled`` and ``torch`` per setting and the
matrix products' share (the floor a step cannot go below on this CPU).

    OMP_NUM_THREADS=1 python benchmarks/compiled_step.py --numpyro-python /tmp/jaxvenv/bin/python
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import subprocess
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch._inductor.config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_step as ts  # noqa: E402  (the shared hand-written VAE, batches, NumPyro child)

NETS = {"tiny": dict(hidden_dims=(16,), activation="tanh", z_dim=4), **ts.NETS}
SETTINGS = ["tiny:1", "default:128", "default:512", "pyro-example:128", "pyro-example:512"]
QUICK = dict(settings=["tiny:1", "default:128", "default:512"], rounds=11, steps=15, warmup=10)
"""``--quick``: the three settings of the targets and fewer rounds."""
COMPILED = ("pvae-compiled", "torch-compiled")


def torch_contender(net, lr, compiled=False):
    """The hand-written step; ``compiled``: its loss (forward and backward) compiled whole."""
    model = ts.TorchVAE(**net).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.compile(model.loss, fullgraph=True, dynamic=False) if compiled \
        else model.loss

    def step(x):
        loss = loss_fn(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def pvae_contender(net, lr, compiled=False):
    """``fit``'s step: ``make_step``, or with ``compiled`` the ``CompiledStep`` of ``--compile``."""
    from pvae.infer.objectives import make_loss
    from pvae.model.vae import build_vae
    from pvae.training.compiled import CompiledStep
    from pvae.training.step import make_optimizer, make_step

    vae = build_vae(**net).to(DEVICE)
    graphs = compiled and DEVICE.type == "cuda"
    objective, optimizer = make_loss("elbo", 1), make_optimizer(vae, lr, capturable=graphs)
    step = CompiledStep(vae, "elbo", 1, objective, optimizer) if compiled \
        else make_step(vae, objective, optimizer)

    def run(x):
        with pyro.validation_enabled(False):
            return step(x)

    return run


BUILDERS = {"pvae": pvae_contender, "pvae-compiled": lambda n, lr: pvae_contender(n, lr, True),
            "torch": torch_contender, "torch-compiled": lambda n, lr: torch_contender(n, lr, True)}


DEVICE = torch.device("cpu")


def time_round(step, xs, steps):
    """Seconds per step over ``steps`` steps after one untimed step: CPU time of this process
    on a CPU; on CUDA elapsed time, the device synchronized before each reading."""
    step(xs[-1])
    clock = time.perf_counter if DEVICE.type == "cuda" else time.process_time
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    sync()
    tic = clock()
    for i in range(steps):
        step(xs[i % len(xs)])
    sync()
    return (clock() - tic) / steps


def batches(batch_size):
    """``train_step.batches`` on :data:`DEVICE`."""
    return [x.to(DEVICE) for x in ts.batches(batch_size)]


def seconds_now() -> tuple[float, float]:
    """(wall, CPU of this process and its finished children) seconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


def bench_setting(net_name, batch_size, args, numpyro_python):
    """Per contender: CPU ms per step in each round, and the first call's (wall, CPU) seconds."""
    net, xs = NETS[net_name], batches(batch_size)
    steps, first = {}, {}
    pyro.clear_param_store()
    for name in args.contenders:
        torch.manual_seed(0)
        steps[name] = BUILDERS[name](net, args.lr)
        wall, cpu = seconds_now()
        steps[name](xs[0])
        wall2, cpu2 = seconds_now()
        first[name] = (wall2 - wall, cpu2 - cpu)
        for i in range(args.warmup):
            steps[name](xs[i % len(xs)])
    child = ts.NumPyroChild(numpyro_python, net, batch_size, args.steps, args.lr, 1, "cpu") \
        if numpyro_python else None
    times = {name: [] for name in [*steps, *(["numpyro"] if child else [])]}
    try:
        order = list(times)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                times[name].append(child.time_steps() if name == "numpyro"
                                   else time_round(steps[name], xs, args.steps))
    finally:
        if child:
            child.close()
    return times, first


def profile_setting(net_name, batch_size, args):
    """The top operators of ``pvae-compiled`` and ``torch`` over ``args.steps`` steps, and the
    share of the step in matrix products (``mm``/``addmm``/``bmm``, forward and backward)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    net, xs = NETS[net_name], batches(batch_size)
    for name in ("pvae-compiled", "torch"):
        torch.manual_seed(0)
        step = BUILDERS[name](net, args.lr)
        for i in range(args.warmup + 1):
            step(xs[i % len(xs)])
        plan = schedule(wait=1, warmup=3, active=args.steps)  # the profiler's start left out
        kinds = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
        with profile(activities=kinds, schedule=plan) as prof:
            for i in range(args.steps + 4):
                step(xs[i % len(xs)])
                prof.step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events if not e.key.startswith("ProfilerStep"))
        mm = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise"))
        print(f"\n{name}, {net_name}, batch {batch_size}: {total / args.steps / 1e3:.3f} ms of "
              f"operators per step, {mm / args.steps / 1e3:.3f} ms of it matrix products "
              f"({100 * mm / max(total, 1):.0f} %)")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def bench_epochs(args):
    """One epoch of ``fit`` eager, and two of ``fit(compile=True)``: (wall, CPU) seconds each."""
    from pvae.data import load_mnist
    from pvae.model.vae import build_vae
    from pvae.training.loop import fit

    train_x = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset).train_x
    out = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        vae = build_vae(**NETS["default"])
        epochs = 2 if compiled else 1
        wall, cpu = seconds_now()
        state = fit(vae, train_x, epochs=epochs, batch_size=args.epoch_batch_size, lr=args.lr,
                    device=str(DEVICE), seed=0, progress=False, compile=compiled)
        wall2, cpu2 = seconds_now()
        records = state.history
        if compiled:
            out["compiled epoch 1 (with compilation)"] = (records[0].seconds,
                                                          records[0].cpu_seconds)
            out["compiled epoch 2"] = (records[1].seconds, records[1].cpu_seconds)
            out["compiled fit, 2 epochs, start to end"] = (wall2 - wall, cpu2 - cpu)
        else:
            out["eager epoch"] = (records[0].seconds, records[0].cpu_seconds)
            out["eager fit, 1 epoch, start to end"] = (wall2 - wall, cpu2 - cpu)
    return train_x.shape[0], out


def epochs_in_child(args):
    """:func:`bench_epochs` in a fresh process (fresh caches: the compiled epoch's compilation is
    a first one, not a hit on the graphs the settings above compiled); prints its table."""
    command = [sys.executable, str(Path(__file__).resolve()), "--epochs-only", "--data-dir",
               args.data_dir, "--train-subset", str(args.train_subset), "--epoch-batch-size",
               str(args.epoch_batch_size), "--lr", str(args.lr), "--device", args.device]
    sys.stdout.flush()
    subprocess.run(command + (["--keep-cache"] if args.keep_cache else []), check=True)


def print_epochs(args):
    """The table of :func:`bench_epochs`."""
    n, epochs = bench_epochs(args)
    print(f"\n`fit` on {n} MNIST images, batch {args.epoch_batch_size}, default net (a fresh "
          "process):\n\n| run | wall s | CPU s |\n|---|---|---|")
    for what, (wall, cpu) in epochs.items():
        print(f"| {what} | {wall:.2f} | {cpu:.2f} |")


def table(results):
    """The markdown table of the step times and ratios."""
    names = list(next(iter(results.values()))[0])
    head = "| net | batch | " + " | ".join(f"{n} ms" for n in names) + \
        " | compiled / torch | compiled / pvae | compiled / numpyro |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (net, batch), (times, _) in results.items():
        ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}

        def ratio(a, b):
            if a not in times or b not in times:
                return "—"
            rs = [x / y for x, y in zip(times[a], times[b])]
            return f"{statistics.median(rs):.2f} [{min(rs):.2f}, {max(rs):.2f}]"

        lines.append(f"| {net} | {batch} | " + " | ".join(f"{ms[n]:.3f}" for n in names) +
                     f" | {ratio('pvae-compiled', 'torch')} | {ratio('pvae-compiled', 'pvae')}"
                     f" | {ratio('pvae-compiled', 'numpyro')} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=SETTINGS, metavar="NET:BATCH",
                   help=f"nets {sorted(NETS)} at batch sizes (default: {' '.join(SETTINGS)})")
    p.add_argument("--contenders", nargs="+", choices=sorted(BUILDERS), default=list(BUILDERS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20, help="timed steps per contender per round")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--numpyro-python", default="",
                   help="a Python with jax and numpyro (default: this one if it has them; "
                        "'none' to skip)")
    p.add_argument("--no-epoch", action="store_true", help="skip the MNIST epochs of fit")
    p.add_argument("--data-dir", default=str(HERE.parent / "data"))
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--epoch-batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: on CUDA the times "
                   "are elapsed, the compiled step a CUDA graph, NumPyro left out")
    p.add_argument("--profile", action="store_true", help="print operator profiles too")
    p.add_argument("--profile-rows", type=int, default=12)
    p.add_argument("--quick", action="store_true",
                   help="tiny:1, default:128 and default:512 only, 11 rounds x 15 steps after 10 "
                        "warm-up steps (under 5 minutes on 2 cores, compilations included); "
                        "overrides those options")
    p.add_argument("--epochs-only", action="store_true",
                   help="only the epochs of fit (the child process the full run starts)")
    p.add_argument("--keep-cache", action="store_true",
                   help="use inductor's usual cache (default: a fresh one, so compile times "
                        "are those of a first run)")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def main(argv=None):
    global DEVICE
    args = parse_args(argv)
    DEVICE = torch.device(args.device)
    if not args.keep_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pvae-inductor-")
    torch.set_num_threads(1)
    torch._inductor.config.compile_threads = 1  # the compiler's CPU time is this process's
    if args.epochs_only:
        print_epochs(args)
        return 0
    numpyro_python = ts.find_numpyro_python(args.numpyro_python) if DEVICE.type == "cpu" \
        else None
    print(ts.machine())
    print(f"numpyro: {'run with ' + numpyro_python if numpyro_python else 'not found (skipped)'}")
    clock = "CPU time" if DEVICE.type == "cpu" else "CUDA, elapsed time"
    print(f"{clock}, one thread; {args.rounds} interleaved rounds x {args.steps} steps after "
          f"{args.warmup} warm-up steps; ratio = median over rounds [min, max]\n")
    results = {}
    for setting in args.settings:
        net, batch = setting.split(":")
        results[net, int(batch)] = bench_setting(net, int(batch), args, numpyro_python)
        print(f"done {setting}", flush=True)
        if args.profile:
            profile_setting(net, int(batch), args)
    print("\n" + table(results) + "\n")
    print("| net | batch | contender | first call (compilation), wall s | CPU s |\n"
          "|---|---|---|---|---|")
    for (net, batch), (_, first) in results.items():
        for name in (n for n in COMPILED if n in first):
            print(f"| {net} | {batch} | {name} | {first[name][0]:.1f} | {first[name][1]:.1f} |")
    if not args.no_epoch:
        epochs_in_child(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
