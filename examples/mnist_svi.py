"""Train a VAE on binarized MNIST with SVI, estimate its test log p(x), draw figures.

    python examples/mnist_svi.py                      # the default run (~10 min, 2 CPU cores)
    python examples/mnist_svi.py --epochs 1 --train-subset 500 --test-subset 200
    python examples/mnist_svi.py --prior vamp --guide iaf --beta 2 --method ais
    python examples/mnist_svi.py --supervision semi --labelled 100   # M2, 100 labels

Writes OUT/checkpoint.pt (every epoch), OUT/metrics.json and figures; prints a summary.
Every flag (one per setting of pvae.RunConfig and per option of a registered part):
python examples/mnist_svi.py --help. ``pvae train`` runs the same steps.
"""
import sys

from pvae import distributed, fit
from pvae.runs import cli, experiment


def main(argv=None) -> int:
    # One frozen configuration holds every setting: data, model (prior, guide, likelihood,
    # sizes, β), training (epochs, batch, lr, objective, recipe) and evaluation (K, AIS).
    config = cli.parse("python examples/mnist_svi.py", argv, __doc__.splitlines()[0])
    with experiment.workspace(config) as (out, device, world):
        # MNIST (offline route included): training images grayscale, binarized afresh per
        # batch; the test images binarized once (seed 123), so log p(x) is a discrete one.
        data = experiment.load_data(config, out)
        # The VAE is a Pyro model p(z) p(x|z) and guide q(z|x), built from registry names;
        # β scales the latent sites with poutine.scale in both.
        config, vae = experiment.build_model(config, data)
        # SVI: the loss and gradients of Trace_ELBO (or the IWAE bound; TraceEnum_ELBO for
        # --supervision semi, given the labels), one fused Adam, an atomic checkpoint after
        # every epoch (--resume continues from it).
        state = fit(vae, data.train_x, config.train, test_x=data.test_x, out_dir=out,
                    resume=config.resume, overwrite=config.overwrite, device=str(device),
                    progress=config.progress, record=config.to_dict(),
                    **experiment.training_labels(vae, data))
        # log p(x) ≈ logsumexp_k [log p(x, z_k) − log q(z_k|x)] − log K with PSIS k-hat on
        # the test set (a label y summed exactly); AIS and BDMC as well with --method ais|bdmc.
        metrics = experiment.training_metrics(state)
        metrics.update(experiment.evaluate_model(vae, data.test_x.to(device), config, out,
                                                 config.progress and distributed.is_main(),
                                                 test_y=data.test_y.to(device)))
        metrics = experiment.finish(vae, data, state, metrics, config, out, world)
    if distributed.env_rank() == 0:  # under torchrun, rank 0 reports
        print(cli.summary(metrics))
        print(f"wrote {config.out}/metrics.json, checkpoint.pt and figures")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_guarded(main))
