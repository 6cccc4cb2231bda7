"""The training program.

    python -m efficientnet_ipu.main --config=experiments/b2_g16.py --workdir=runs/b2_g16

Any config field can be overridden on the command line (``--config.train.epochs=2``); an
unknown field is an error. Running again on the same workdir resumes from its last
checkpoint. See ``efficientnet_ipu.train`` for what the workdir holds.
"""
from absl import app, flags
from ml_collections import config_flags

import efficientnet_ipu  # noqa: F401  (before TensorFlow: enables oneDNN, see __init__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "folder for checkpoints, logs and the export")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    from efficientnet_ipu import config as config_lib, train
    config = FLAGS.config
    config_lib.validate(config)
    train.Trainer(config, FLAGS.workdir).train()
    return 0


if __name__ == "__main__":
    app.run(main)
