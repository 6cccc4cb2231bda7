"""The package runs on the Poplar SDK's Python 3.8: no syntax or standard-library use newer
than 3.8 (checked by vermin, a test dependency)."""
import os
import shutil
import subprocess

from conftest import REPO


def test_no_syntax_newer_than_python_3_8():
    vermin = shutil.which("vermin")
    assert vermin, "vermin is a test dependency: pip install -e '.[test]'"
    result = subprocess.run(
        [vermin, "--target=3.8-", "--violations", "--no-tips", "--eval-annotations",
         "efficientnet_ipu", "experiments", "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
