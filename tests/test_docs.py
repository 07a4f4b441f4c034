"""The documentation builds with warnings as errors."""
import subprocess
import sys

import pytest

from conftest import REPO


def test_sphinx_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="install the [docs] extra")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(REPO / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "html" / "index.html").is_file()
