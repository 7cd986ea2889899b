"""The optional stages of a `train` run (paper sec. 2.2, 2.4.2, 2.5) and what the run
reports about them: ACID curation against a reference preset (`ActiveCurator`), the
NaFlex stage's start line, the LocCa tasks the data allows (one warning when it has
no region boxes), and the progress lines that name them."""

import os
import warnings

import keras
import numpy as np

from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.presets import resolve_preset
from keras_siglip2.training.curation import ActiveCurator
from keras_siglip2.training.data.balancing import MomentMatchingBalancer
from keras_siglip2.training.pretrainer import CURATION_METRICS, resolve_teacher_losses


# Appended to the pretrainer's NaFlex rule when a NaFlex preset is asked for SILC / TIPS.
NAFLEX_TEACHER_HINT = ("NaFlex training uses the sigmoid and LocCa losses only (paper "
                       "sec. 2.4.2); on the command line drop --self-distillation / "
                       "--masked-prediction.")


def teacher_losses(vision_encoder, self_distillation, masked_prediction):
    """(self_distillation, masked_prediction) for this image tower by the paper's
    NaFlex rule (`pretrainer.resolve_teacher_losses`, its one home): None = on for a
    fixed-resolution tower, off for NaFlex; True for NaFlex is an error ending with
    `NAFLEX_TEACHER_HINT`."""
    return resolve_teacher_losses(vision_encoder, self_distillation, masked_prediction,
                                  hint=NAFLEX_TEACHER_HINT)


def _make_curator(config):
    """ACID (paper sec. 2.5): an `ActiveCurator` over the frozen reference preset, or
    None without `curate_with`."""
    if config.curate_with is None:
        return None
    reference = SigLIP2Backbone.from_preset(resolve_preset(os.fspath(config.curate_with)))
    return ActiveCurator(reference, keep_ratio=config.keep_ratio)


def _host_batch_size(config, run):
    """Examples this host reads per step: its share of the batch, or with a curator
    the super-batch ACID selects it from."""
    per_host = config.batch_size // run.num_hosts
    return per_host if run.curator is None else run.curator.super_batch_size(per_host)


def balancing_options(config):
    """`image_text_dataset` keyword arguments of M4 balancing: {"balancing": a
    `MomentMatchingBalancer` over the configured attributes and proxies} or {}."""
    if config.balance_attributes is None:
        return {}
    return {"balancing": MomentMatchingBalancer(list(config.balance_attributes),
                                                list(config.balance_proxies))}


def balancing_statistics(dataset):
    """The M4 target and achieved statistics the data pipeline reports
    (`dataset.info.balancing_statistics()`), or None."""
    method = getattr(getattr(dataset, "info", None), "balancing_statistics", None)
    return _plain(method()) if callable(method) else None


def _plain(value):
    """JSON-able copy of nested dicts / lists / numpy arrays and scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class LoccaTasksWarning(UserWarning):
    """The data has no region boxes: LocCa trains captioning only."""


def _locca_tasks(dataset):
    """The LocCa tasks the data has trained so far (`dataset.info.locca_tasks()` of
    the data pipeline), or None when the pipeline does not say."""
    tasks = getattr(getattr(dataset, "info", None), "locca_tasks", None)
    return list(tasks()) if callable(tasks) else None


class LoccaTasksCheck(keras.callbacks.Callback):
    """After the first epoch: one `LoccaTasksWarning` when no delivered example had
    a region box (LocCa then trains captioning only, not referring expressions or
    grounded captioning, paper sec. 2.2)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.warned = False

    def on_epoch_end(self, epoch, logs=None):
        tasks = _locca_tasks(self.dataset)
        if self.warned or tasks is None or set(tasks) & {"aref", "gcap"}:
            return
        self.warned = True
        warnings.warn(
            "LocCa trains captioning only: the data has no region boxes, so referring "
            "expressions (aref) and grounded captioning (gcap) are off. Add `boxes` / "
            "`box_texts` columns to train them (see the data guide).",
            LoccaTasksWarning, stacklevel=2)


def _curation_summary(config, run):
    """ACID in the run summary: reference, kept fraction (configured and logged),
    super-batch size and the learnability of the kept examples over the run."""
    if run.curator is None:
        return None
    logs, records = run.progress.last_logs, run.progress.records
    learnability = [r["acid_learnability"] for r in records if "acid_learnability" in r]
    return {
        "reference": str(config.curate_with),
        "keep_ratio": run.curator.keep_ratio,
        "super_batch_size": run.curator.super_batch_size(config.batch_size),
        "kept_fraction": logs.get("acid_kept_fraction"),
        "learnability": {
            "final": logs.get("acid_learnability"),
            "mean": float(np.mean(learnability)) if learnability else None,
            "per_epoch": learnability,
        },
        "metrics": list(CURATION_METRICS),
    }


def _start_line(config, run):
    terms = ", ".join(run.pretrainer.active_terms)
    extra = ""
    if run.pretrainer.decoder is not None:
        extra += "; LocCa: captioning, aref + gcap on examples with region boxes"
    if run.curator is not None:
        extra += (f"; ACID with {config.curate_with}, keeping {run.curator.keep_ratio:g} "
                  "of each super-batch")
    if config.naflex_from is not None:
        extra += f"; NaFlex from {config.naflex_from:g} of the steps"
    resumed = f", resuming at step {run.start_step}" if run.start_step else ""
    return (f"Training {config.preset} for {config.steps} steps (batch "
            f"{config.batch_size}; losses: {terms}{extra}{resumed}).")


def _end_line(summary, run):
    tasks = summary["locca_tasks"]
    locca = "" if tasks is None else f"; LocCa tasks: {', '.join(tasks)}"
    curation = summary["curation"]
    acid = "" if curation is None else (
        f"; ACID kept {curation['kept_fraction']}, learnability "
        f"{curation['learnability']['final']}")
    return (f"Trained {summary['steps']} steps (loss {summary['final_loss']}{locca}"
            f"{acid}). Wrote preset {run.preset_out} and {summary['summary_path']}.")
