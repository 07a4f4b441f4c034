"""Throughput of pvae's importance-sampled log p(x) against a plain-PyTorch estimator.

Both estimate log p(x) = logsumexp_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)] − log K
for the same VAE (build_vae()'s default network: Bernoulli likelihood, Normal encoder,
N(0, I) prior), on the same examples, with the same number of latent draws per pass.
Repetitions are interleaved so that machine load hits both alike. The peak memory of the
pvae estimator is measured with ``ru_maxrss`` in a fresh subprocess at K=5000.

    python benchmarks/evaluate_throughput.py                    # random weights, random data
    python benchmarks/evaluate_throughput.py --checkpoint runs/mnist/checkpoint.pt --data-dir data
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pvae.evaluate import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, importance_sampling,
                           log_likelihood)
from pvae.model.nets import Split, mlp
from pvae.model.vae import build_vae


def plain_modules(vae, hidden_dims, activation):
    """The VAE's encoder and decoder copied into plain nn.Modules (no Pyro anywhere)."""
    enc = Split(mlp(vae.x_dim, hidden_dims, 2 * vae.z_dim, activation), 2)
    enc.load_state_dict(vae.q.net.state_dict())
    dec = mlp(vae.z_dim, hidden_dims, vae.x_dim, activation)
    dec.load_state_dict(vae.likelihood.decoder.state_dict())
    return enc.eval(), dec.eval()


@torch.no_grad()
def plain_log_px(enc, dec, x: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
    """Hand-written batched IS estimator: chunk // K examples per pass, all K draws each."""
    per_pass = max(1, chunk // num_samples)
    k_pass = min(num_samples, chunk)
    out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    log2pi = math.log(2 * math.pi)
    for b0 in range(0, x.shape[0], per_pass):
        xb = x[b0:b0 + per_pass]
        loc, raw = enc(xb)
        scale = F.softplus(raw) + 1e-5
        for k0 in range(0, num_samples, k_pass):
            k = min(k_pass, num_samples - k0)
            eps = torch.randn((k,) + loc.shape)
            z = loc + scale * eps
            logits = dec(z)
            log_lik = -F.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_prior = -0.5 * (z.pow(2) + log2pi).sum(-1)
            log_q = (-0.5 * (eps.pow(2) + log2pi) - scale.log()).sum(-1)
            lw = (log_lik + log_prior - log_q).double()
            sl = slice(b0, b0 + xb.shape[0])
            out[sl] = torch.logaddexp(out[sl], torch.logsumexp(lw, 0))
    return out - math.log(num_samples)


def load_setup(args):
    """(vae, x): from --checkpoint / --data-dir when given, else random weights and data."""
    if args.checkpoint:
        from pvae.training.checkpoint import load

        vae = load(args.checkpoint, device="cpu")
        hidden, act = tuple(vae.config.hidden_dims), vae.config.activation
    else:
        torch.manual_seed(0)
        vae = build_vae(hidden_dims=args.hidden_dims)
        hidden, act = tuple(args.hidden_dims), "tanh"
    x = None
    if args.data_dir:
        from pvae.data import load_mnist
        from pvae.data.mnist import RAW_FILES, raw_dir

        if all((raw_dir(args.data_dir) / f).exists() for f in RAW_FILES.values()):
            x = load_mnist(args.data_dir, binarize=True, test_subset=args.n).test_x
    source = "MNIST test set" if x is not None else "random binary data"
    if x is None:
        x = torch.bernoulli(torch.full((args.n, vae.x_dim), 0.13,),
                            generator=torch.Generator().manual_seed(1))
    return vae, x, hidden, act, source


def measure_rss(args) -> dict:
    """Run the pvae estimator at K=5000 in a subprocess; return its ru_maxrss numbers."""
    cmd = [sys.executable, __file__, "--_rss", "--num-samples", "5000", "--n", str(args.rss_n),
           "--chunk-size", str(args.chunk_size), "--hidden-dims", *map(str, args.hidden_dims)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float | None:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_child(args) -> None:
    """Child process: resident memory before importance_sampling() and its peak during it,
    in MB.

    The peak is VmHWM after resetting it (``/proc/self/clear_refs``), so it covers only
    the evaluation; off Linux it falls back to ``ru_maxrss`` of this process.
    """
    vae, x, *_ = load_setup(args)
    with torch.no_grad():
        vae.model(x[:2]), vae.guide(x[:2])
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS")
    except OSError:
        before = None
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    importance_sampling(vae.model, vae.guide, x, num_samples=args.num_samples,
                        chunk_size=args.chunk_size, progress=False, host=vae)
    peak = _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_before_mb": before, "peak_mb": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=96, help="test examples")
    ap.add_argument("--num-samples", type=int, default=1000, help="K")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    ap.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-n", type=int, default=40, help="examples for the K=5000 memory run")
    ap.add_argument("--_rss", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss:
        return rss_child(args)

    vae, x, hidden, act, source = load_setup(args)
    enc, dec = plain_modules(vae, hidden, act)
    K, chunk = args.num_samples, args.chunk_size
    print(f"{source}: n={x.shape[0]}, K={K}, chunk={chunk} draws/pass, "
          f"torch threads={torch.get_num_threads()}")
    log_likelihood(vae.model, vae.guide, x[:2], num_samples=10, host=vae)
    plain_log_px(enc, dec, x[:2], 10, chunk)
    times = {"pvae": [], "plain": []}
    cpu = {"pvae": [], "plain": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("pvae", lambda: log_likelihood(vae.model, vae.guide, x, num_samples=K,
                                                      chunk_size=chunk, host=vae)),
                         ("plain", lambda: plain_log_px(enc, dec, x, K, chunk))):
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    n = x.shape[0]
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_rate = {k: n / statistics.median(v) for k, v in cpu.items()}
    for name in ("pvae", "plain"):
        print(f"{name:>6}: {rate[name]:7.1f} examples/s wall, {cpu_rate[name]:7.1f} per CPU-second "
              f"(medians; wall runs {', '.join(f'{t:.2f}' for t in times[name])} s); "
              f"mean log p(x) {results[name].mean():.3f}")
    print(f" ratio pvae / plain: {rate['pvae'] / rate['plain']:.3f} (wall time), "
          f"{cpu_rate['pvae'] / cpu_rate['plain']:.3f} (CPU time, robust to other load)")

    rss = measure_rss(args)
    print(f"memory: importance_sampling() at K=5000 on {args.rss_n} examples, chunk {chunk}, "
          f"in a fresh process: peak resident {rss['peak_mb']:.0f} MB, "
          f"{rss['peak_mb'] - rss['rss_before_mb']:.0f} MB above the "
          f"{rss['rss_before_mb']:.0f} MB of the loaded model.")
    grow_mb = ((DEFAULT_BATCH_SIZE - min(args.rss_n, DEFAULT_BATCH_SIZE)) * 5000 * 8
               + 10000 * 4 * 8) / 2**20
    print(f"        Full 10k test set at K=5000: the passes are the same size; only the K x "
          f"{DEFAULT_BATCH_SIZE} log-weight buffer and the per-example results grow "
          f"(+{grow_mb:.1f} MB), so the peak is about {rss['peak_mb'] + grow_mb:.0f} MB.")

if __name__ == "__main__":
    main()
