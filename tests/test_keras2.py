"""The layer, model and optimizer tests again under Keras 2 (tf-keras, TF_USE_LEGACY_KERAS=1), the
Keras that Graphcore's IPU TensorFlow 2.6 ships a fork of."""
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.skipif(os.environ.get("TF_USE_LEGACY_KERAS") == "1",
                    reason="already running under Keras 2")
def test_layer_and_model_tests_pass_under_keras2():
    pytest.importorskip("tf_keras", reason="tf-keras is needed for the Keras 2 run")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_layers.py", "tests/test_models.py", "tests/test_optimizers.py",
         # the largest size, counting and a numerical property (Keras-neutral)
         "-k", "not b7 and not table2 and not channel_normalized_with_depth",
         "-W", "ignore::UserWarning"] + [
             # Training under Keras 2 for the paper's two norms; the other six are the same
             # code paths.
             "--deselect=tests/test_models.py::test_every_norm_trains_b0_at_64px[%s]" % norm
             for norm in ("gn", "gn_pn", "in", "in_pn", "ln", "bn_pn")],
        capture_output=True, text=True, timeout=1800, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout.splitlines()[-1], out.stdout[-2000:]
    check = subprocess.run([sys.executable, "-c", "from tensorflow import keras; "
                            "print(keras.__name__, keras.layers.Layer.__module__)"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert "tf_keras" in check.stdout, check.stdout + check.stderr[-1000:]
