"""The documentation builds, and every Python block of the README and docs/ runs as written.

Blocks run on small data: ``load_mnist`` is replaced by one that returns the first 300
training and 100 test images, whatever subset a block asks for. The blocks of one page run
in order in one namespace, which starts with the names a page assumes its reader has: a
small trained ``vae`` and binarized ``test_x`` (and ``x_batch``, a training batch).
"""
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]


def python_blocks(path) -> list[str]:
    """The Python code blocks of a Markdown (```python) or reST (.. code-block:: python) page."""
    text = path.read_text()
    if path.suffix == ".md":
        return re.findall(r"```python\n(.*?)```", text, flags=re.S)
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:[ ]{3,}.*\n|\n)+)", text):
        lines = match.group(1).rstrip().splitlines()
        indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
        blocks.append("\n".join(l[indent:] for l in lines) + "\n")
    return blocks


def test_sphinx_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="install the [docs] extra")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(REPO / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "html" / "index.html").is_file()


def test_every_page_with_python_has_blocks_the_collector_finds():
    assert len(python_blocks(REPO / "README.md")) >= 1
    assert len(python_blocks(REPO / "docs" / "quickstart.rst")) >= 2


@pytest.fixture
def small_mnist(monkeypatch, mnist_dir):
    """MNIST through every route (load_mnist, load_dataset, a run) is its first 300 training
    and 100 test images, whatever subset a block asks for."""
    import pvae
    import pvae.data
    import pvae.data.registry

    real = pvae.data.registry.load_dataset

    def load_small(dataset="mnist", data_dir="data", binarize=True, train_subset=None,
                   test_subset=None, classes=None):
        if dataset != "mnist":
            return real(dataset, data_dir, binarize, train_subset, test_subset, classes)
        return real(dataset, mnist_dir, binarize, min(train_subset or 300, 300),
                    min(test_subset or 100, 100), classes)

    for module in (pvae.data.registry, pvae.data, pvae):
        monkeypatch.setattr(module, "load_dataset", load_small)
    return lambda **kw: pvae.data.load_mnist("unused", **kw)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run_as_written(page, small_mnist, tmp_path, monkeypatch):
    from pvae import build_vae, fit

    monkeypatch.chdir(tmp_path)
    data = small_mnist()
    torch.manual_seed(0)
    vae = build_vae(hidden_dims=(32,), z_dim=4)
    fit(vae, data.train_x, epochs=1, batch_size=100, device="cpu", progress=False, seed=0)
    namespace = {"vae": vae, "test_x": data.test_x, "x_batch": torch.bernoulli(data.train_x[:100])}
    for i, block in enumerate(python_blocks(page)):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)


def test_the_readme_quickstart_checkpoint_is_read_by_the_cli(small_mnist, mnist_dir, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks(REPO / "README.md")[0], "README.md", "exec"), {})
    checkpoint = tmp_path / "runs" / "quick" / "checkpoint.pt"
    args = ["evaluate", "--checkpoint", checkpoint, "--data-dir", mnist_dir, "--test-subset", 20,
            "--num-samples", 30, "--device", "cpu", "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "pvae", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test log p(x), K=30" in done.stdout
