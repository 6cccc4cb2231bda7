"""The training program.

    python -m efficientnet_ipu.main --config=experiments/b2_g16.py --workdir=runs/b2_g16

Any config field can be overridden on the command line (``--config.train.epochs=2``); an
unknown field is an error. The job runs the stages the config enables
(``efficientnet_ipu.stages``): training with the weight average, fine-tuning at the test
size (``config.finetune``), a test-size sweep (``config.sweep``) and the export. Running
again on the same workdir resumes where it stopped. See ``efficientnet_ipu.train`` for what
the workdir holds.

The console shows the progress bar, one line per epoch and one per export. Library
chatter (absl INFO lines from the checkpoint saver and the export, TensorFlow's C++ INFO
and WARNING logs) is off unless ``--verbosity`` (absl's flag, e.g. ``--verbosity=0`` for
INFO) is given. The few lines TensorFlow prints while it loads, before its logging starts,
remain.
"""
import os
import sys

# Read before TensorFlow is imported (loading the config file imports it).
QUIET = not any(arg.split("=")[0] in ("--verbosity", "-v") for arg in sys.argv[1:])
if QUIET:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import efficientnet_ipu  # noqa: F401,E402  (before TensorFlow: enables oneDNN, see __init__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "folder for checkpoints, logs and the export")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if QUIET:
        logging.set_verbosity(logging.WARNING)
    from efficientnet_ipu import config as config_lib, data, stages, train, workdir
    config = FLAGS.config
    config_lib.validate(config)
    try:
        stages.run(config, FLAGS.workdir)
    except (train.NonFiniteError, workdir.WorkdirInUseError, data.BadImageError) as error:
        print("error: %s" % error, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
