"""The main job's stages, in order, each resumable after a kill (paper 001's whole method):

1. train (at ``image_size.train``, e.g. half resolution; ``train.Trainer``), keeping the
   weight average (``average``) and writing ``averaged/`` at the end;
2. fine-tune at ``finetune.image_size`` the last ``finetune.blocks`` blocks, where
   ``finetune.enabled`` (``finetune.FineTuner``);
3. sweep the test sizes ``sweep.image_sizes``, where given (``evaluate.sweep``);
4. export a SavedModel, where ``export.enabled``: the fine-tuned weights at the fine-tune
   size when fine-tuning is on, else the final training weights (averaged, else last) at
   ``image_size.eval``.

A stage that finished is not run again: training stops at its last step, a fine-tune at
its own, the sweep keeps its rows, and the export is skipped where its version exists.
"""
import os

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import workdir as workdir_lib


def export_weights(config, workdir):
    """The ``workdir.Weights`` the export uses (see the module docstring)."""
    if config.finetune.enabled:
        return workdir_lib.find_weights(workdir, "finetuned", config_lib.finetune_size(config),
                                        config.finetune.blocks)
    if config.average.enabled:
        try:
            return workdir_lib.find_weights(workdir, "averaged")
        except FileNotFoundError:  # averaging on, but no epoch finished (e.g. 0 epochs)
            pass
    return workdir_lib.find_weights(workdir, "last")


def export_version(config, workdir, weights):
    """The export's version number: the training step, plus the fine-tune's steps for
    fine-tuned weights (so that it grows with each stage)."""
    import json
    with open(os.path.join(workdir, "eval_results.json")) as f:
        step = int(json.load(f)["step"])
    if weights.kind == "finetuned":
        with open(os.path.join(os.path.dirname(os.path.dirname(weights.path)),
                               "eval_results.json")) as f:
            step += int(json.load(f)["steps"])
    return step


def export_stage(config, workdir, class_names):
    """Export the weights ``export_weights`` picks at their size; returns the path."""
    from efficientnet_ipu import export, train
    weights = export_weights(config, workdir)
    version = export_version(config, workdir, weights)
    path = os.path.join(workdir, "export", str(version))
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        print("Export %s exists" % path, flush=True)
        return path
    train.set_precision(config.train.precision)
    model = workdir_lib.read_weights(workdir_lib.build_model(workdir), weights)
    path = export.export_saved_model(model, os.path.join(workdir, "export"), version,
                                     weights.image_size, class_names)
    print("Exported SavedModel (%s weights, %d px) to %s" % (weights.label, weights.image_size,
                                                             path), flush=True)
    return path


def run(config, workdir, source=None):
    """Run every stage the config enables, holding the workdir's lock
    (``workdir.WorkdirLock``); returns {stage: its result}.

    Raises: ValueError for a bad config field (before anything runs),
    ``workdir.WorkdirInUseError`` where another job holds the workdir, and what a stage
    raises (``train.NonFiniteError`` for a diverged run)."""
    from efficientnet_ipu import data
    config_lib.validate(config)
    source = source or data.open_source(config.dataset)
    with workdir_lib.WorkdirLock(workdir, "efficientnet_ipu.main"):
        return _run_stages(config, workdir, source)


def _run_stages(config, workdir, source):
    from efficientnet_ipu import evaluate, finetune, train
    results = {"train": train.Trainer(config, workdir, source).train()}
    if config.finetune.enabled:
        results["finetune"] = finetune.FineTuner(workdir, source=source).run()
    if config.sweep.image_sizes:
        results["sweep"] = evaluate.sweep(
            workdir, config_lib.parse_sizes(config.sweep.image_sizes),
            config_lib.parse_weights(config.sweep.weights),
            strict=config.sweep.weights != "all", source=source)
    if config.export.enabled:
        results["export"] = export_stage(config, workdir, source.class_names)
    return results
