"""The main job's stages, in order, each resumable after a kill (paper 001's whole method):

1. train (at ``image_size.train``, e.g. half resolution; ``train.Trainer``), keeping the
   weight average (``average``) and writing ``averaged/`` at the end;
2. fine-tune at ``finetune.image_size`` the last ``finetune.blocks`` blocks, where
   ``finetune.enabled`` (``finetune.FineTuner``);
3. sweep the test sizes ``sweep.image_sizes``, where given (``evaluate.sweep``);
4. export a SavedModel, where ``export.enabled``: the fine-tuned weights at the fine-tune
   size when fine-tuning is on, else the final training weights (averaged, else last) at
   ``image_size.eval``.

At the end the job writes ``run_summary.json`` (``summary``) for monitoring. A stage that
finished is not run again: training stops at its last step, a fine-tune at
its own, the sweep keeps its rows, and the export is skipped where its version exists.
"""
import json
import os
import time

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
                                     weights.image_size, class_names,
                                     portable=config.export.portable)
    print("Exported SavedModel (%s weights, %d px) to %s" % (weights.label, weights.image_size,
                                                             path), flush=True)
    return path


SUMMARY_FILE = "run_summary.json"


def run(config, workdir, source=None):
    """Run every stage the config enables, holding the workdir's lock
    (``workdir.WorkdirLock``), and write ``run_summary.json`` (``write_summary``) at the
    end, or when a stage fails after training has started; returns {stage: its result}.

    Raises: ValueError for a bad config field (before anything runs),
    ``workdir.WorkdirInUseError`` where another job holds the workdir, and what a stage
    raises (``train.NonFiniteError`` for a diverged run, ``data.BadImageError`` for an
    undecodable image under ``config.dataset.strict``)."""
    from efficientnet_ipu import data
    config_lib.validate(config)
    source = source or data.open_source(config.dataset)
    with workdir_lib.WorkdirLock(workdir, "efficientnet_ipu.main"):
        return _run_stages(config, workdir, source)


def _run_stages(config, workdir, source):
    from efficientnet_ipu import data, evaluate, finetune, train
    tic = time.time()
    trainer = train.Trainer(config, workdir, source)  # validates; writes nothing on failure
    results = {}
    try:
        with data.bad_image_errors(source):
            results["train"] = trainer.train()
            if config.finetune.enabled:
                results["finetune"] = finetune.FineTuner(workdir, source=source).run()
            if config.sweep.image_sizes:
                results["sweep"] = evaluate.sweep(
                    workdir, config_lib.parse_sizes(config.sweep.image_sizes),
                    config_lib.parse_weights(config.sweep.weights),
                    strict=config.sweep.weights != "all", source=source)
            if config.export.enabled:
                results["export"] = export_stage(config, workdir, source.class_names)
    except Exception as error:
        write_summary(workdir, summary(trainer, source, results, time.time() - tic, error))
        raise
    write_summary(workdir, summary(trainer, source, results, time.time() - tic))
    return results


def summary(trainer, source, results, seconds, error=None):
    """The run summary (JSON-ready dict) of the stages' ``results`` so far:

    - ``status`` "finished" or "failed" (with ``error``, the exception's text);
    - ``step``, ``epochs`` (finished), ``steps_per_epoch``, ``resumed_from_step`` (0 for a
      fresh run), ``wall_seconds`` (of this process, seconds);
    - ``metrics``: top-1 / top-5 in [0, 1] of the ``live`` and ``averaged`` weights at the
      end of training and of the ``finetuned`` weights (each None where not run);
    - ``bad_images``: images skipped by this process and the files (``data.BadImageLog``);
    - ``nonfinite_steps``: steps skipped or stopped at for a non-finite loss or gradients;
    - ``checkpoints``: the checkpoints kept, oldest first; ``export``: the SavedModel's
      path or None.
    """
    def top(metrics):
        return None if not metrics else {k: metrics[k] for k in ("top1", "top5")}
    trained = results.get("train") or {}
    averaged = trained.get("weights") == "averaged"
    tuned = results.get("finetune")
    out = {
        "status": "failed" if error is not None else "finished",
        "step": trainer.current_step,
        "epochs": trainer.current_step // trainer.steps_per_epoch,
        "steps_per_epoch": trainer.steps_per_epoch,
        "resumed_from_step": trainer.start_step,
        "wall_seconds": round(seconds, 1),
        "metrics": {"live": top(trained.get("live") if averaged else trained),
                    "averaged": top(trained) if averaged else None,
                    "finetuned": top(tuned)},
        "bad_images": source.bad_images.summary(),
        "nonfinite_steps": trainer.nonfinite_steps,
        "checkpoints": list(trainer.manager.checkpoints),
        "export": results.get("export"),
    }
    if error is not None:
        out["error"] = "%s: %s" % (type(error).__name__, error)
    return out


def write_summary(workdir, summary_dict):
    """Write ``<workdir>/run_summary.json`` atomically (a temporary file, then a rename),
    so that a reader never sees half of it; returns its path."""
    path = os.path.join(workdir, SUMMARY_FILE)
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(summary_dict, f, indent=2, sort_keys=True)
    os.replace(temp, path)
    return path
