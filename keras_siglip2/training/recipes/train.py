"""`train(...)`: the library function behind `siglip2 train`, the SigLIP 2 training
recipe (paper sec. 2.1-2.4) on a user's image-text data in one call.

It resolves a preset (a released name or a local preset directory), reads the data with
`training.data.pipeline.image_text_dataset` (CSV / JSONL of `image_path,caption`,
TFRecord or WebDataset shards) with the views the chosen losses need, wraps the backbone
in a `SigLIP2Pretrainer` (sigmoid loss, sec. 2.1; LocCa decoder, sec. 2.2; SILC / TIPS
switched on at 80 % by `LossCurriculum`, sec. 2.3), compiles it with the paper's optimizer
and fits it for `steps` optimizer steps. Then it saves the trained backbone, tokenizer
and image converter as a preset (`out_dir/preset`, loadable by `from_preset` and every
`siglip2 --preset`) and writes `out_dir/train_summary.json`.

Resumption (JAX): every `checkpoint_every` steps an orbax checkpoint
(`training.checkpoint`: atomic, sharded arrays written by the hosts holding them) of
the weights, optimizer, EMA teacher, curriculum stage and RNG goes to
`out_dir/backup/<step>`; running the same command again after an interruption (even a
SIGKILL during a write) restores the newest complete one, and the dataset restarts at
the next unseen batch (`start_batch` = the restored step). A finished run deletes its
checkpoints. Other backends: `keras.callbacks.BackupAndRestore` (`.weights.h5`, one
host).

Distribution (`mesh="batch=4,model=2"`, JAX): the multi-host runtime is started
(`distribution.initialize_multihost`, skipped on a single host), the hosts check that
they run the same command (`check_same_on_all_hosts`: preset, data files, steps,
batch, mesh, losses, seed, output folder) and `distribution.setup_distribution`
checks the mesh against the devices, the global batch and the model before anything
is built. `batch_size` is the global batch; each host reads `batch_size / num_hosts`
examples per step from its own share of the data. At the end the weights are
gathered across the hosts (`gathered_copy`) and process 0 writes the preset and the
summary while the others wait at a barrier. The output folder must be shared by the
hosts.

NaFlex presets (sec. 2.4.2) train with the sigmoid and LocCa losses only (no SILC /
TIPS, as the paper's NaFlex stage): the pipeline gives NaFlex views (aspect-preserving
patches) with the sequence length drawn per batch from `naflex_sequence_lengths` (the
paper's {128, 256, 576, 784, 1024} by default); the jitted step is compiled once per
length. A fixed-resolution preset with `naflex_from` continues as a NaFlex model from
that fraction of the steps, on NaFlex views with `naflex_lengths`, and is saved as a
NaFlex preset (`naflex_stage.py`).

Not covered: the 95 % resolution switch of fixed-resolution presets (the preset already
has its final resolution; use `ResolutionAdaptation` directly for that).
"""
import dataclasses
import json
import math
import os
import time

import keras

from keras_siglip2.convert.common import save_preset
from keras_siglip2.distribution import barrier, gathered_copy
from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.preprocessing import SigLIP2Preprocessor
from keras_siglip2.training.callbacks import (
    SELF_DISTILLATION_START,
    LossCurriculum,
    check_naflex_after_teacher,
)
from keras_siglip2.training.checkpoint import CheckpointCallback, restore_latest
from keras_siglip2.training.data.augment import silc_local_size
from keras_siglip2.training.data.pipeline import (
    NAFLEX_SEQUENCE_LENGTHS,
    default_host,
    image_text_dataset,
)
from keras_siglip2.training.pretrainer import LOSS_TERMS, SigLIP2Pretrainer
from keras_siglip2.training.recipes.config import (  # noqa: F401 (part of this API)
    CONFIG_FILE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_STEPS,
    TrainConfig,
    _explicit_mesh_size,
    _mesh_data_axis,
    check_arguments,
    check_data_path,
    config_from_arguments,
)
from keras_siglip2.training.recipes.hosts import (  # noqa: F401 (part of this API)
    _check_same_command,
    _data_fingerprint,
    _preset_fingerprint,
    _start_hosts,
    setup_hosts,
)
from keras_siglip2.training.recipes.progress import (  # noqa: F401 (part of this API)
    TrainProgress,
    _make_callbacks,
    _restored_step,
    _step_of,
)
from keras_siglip2.training.recipes.naflex_stage import (
    naflex_preprocessor,
    naflex_switch,
    naflex_views,
    phase_ends,
    preset_converter,
    stage_lengths,
)
from keras_siglip2.training.recipes.stages import (  # noqa: F401 (part of this API)
    LoccaTasksCheck,
    LoccaTasksWarning,
    _curation_summary,
    _end_line,
    _host_batch_size,
    _locca_tasks,
    _make_curator,
    _start_line,
    balancing_options,
    balancing_statistics,
    teacher_losses,
)


# --------------------------------------------------------------------------- pieces
def dataset_views(backbone, decoder, self_distillation, masked_prediction,
                  naflex_sequence_lengths=None):
    """`image_text_dataset` keyword arguments giving the batch fields the pretrainer
    needs: the image at the model resolution (or, for a NaFlex tower, NaFlex patches
    with the sequence length drawn per batch from `naflex_sequence_lengths`, default
    the paper's), SILC local crops, the TIPS mask, LocCa targets (matching the
    decoder's location bins and length)."""
    if not isinstance(backbone.vision_encoder, SigLIP2VisionEncoder):
        return naflex_views(decoder, naflex_sequence_lengths or NAFLEX_SEQUENCE_LENGTHS)
    views = ["image"]
    kwargs = {}
    if self_distillation:
        views.append("local")
        # SILC's local crops at their own small size (96/224 of the global side).
        kwargs["local_crop_size"] = local_crop_size(backbone.vision_encoder)
    if masked_prediction:
        views.append("masked")
    if self_distillation or masked_prediction:
        kwargs["patch_size"] = backbone.vision_encoder.patch_size
    kwargs["views"] = tuple(views)
    kwargs["locca"] = decoder is not None
    return kwargs


def local_crop_size(vision):
    """The SILC local-crop size the data and the pretrainer share (`silc_local_size`)."""
    return silc_local_size(vision.image_size, vision.patch_size)


def _locca_options(decoder, tokenizer):
    return {
        "num_bins": int(decoder.vocabulary_size - tokenizer.vocabulary_size()),
        "sequence_length": int(decoder.max_sequence_length),
    }


# --------------------------------------------------------------------------- the run
@dataclasses.dataclass
class _Run:
    """What one `train` call has built so far (filled step by step)."""

    preset_path: str
    data_paths: list
    out_dir: str
    checkpoint_every: int
    verbose: bool
    t0: float = 0.0
    num_hosts: int = 1
    host_index: int = 0
    backbone: object = None
    preprocessor: object = None
    pretrainer: object = None
    fixed: bool = True
    curator: object = None
    self_distillation: bool = False
    masked_prediction: bool = False
    start_step: int = 0
    checkpoints: object = None
    dataset: object = None
    naflex_dataset: object = None
    data_kwargs: dict = None
    progress: object = None
    backup: object = None
    train_s: float = 0.0

    @property
    def backup_dir(self):
        return os.path.join(self.out_dir, "backup")

    @property
    def preset_out(self):
        return os.path.join(self.out_dir, "preset")


def _build_pretrainer(config, run):
    """Loads the preset and wraps it in a compiled `SigLIP2Pretrainer` (SILC / TIPS on
    by default for a fixed-resolution tower only, paper sec. 2.4.2)."""
    # The reference model loads first: the learner's new layers keep their seeded init.
    # It is seeded too: under a multi-host distribution every variable's initial value
    # must be the same on every process (device_put checks it), even if the preset's
    # weights replace it right after.
    keras.utils.set_random_seed(config.seed + 1)
    run.curator = _make_curator(config)
    keras.utils.set_random_seed(config.seed)
    run.backbone = SigLIP2Backbone.from_preset(run.preset_path)
    run.fixed = isinstance(run.backbone.vision_encoder, SigLIP2VisionEncoder)
    if not run.fixed and config.naflex_from is not None:
        raise ValueError(
            f"`naflex_from`={config.naflex_from!r}: `preset`={config.preset!r} already "
            "has a NaFlex image tower; the NaFlex stage continues a fixed-resolution "
            "preset (paper sec. 2.4.2)."
        )
    if run.fixed and config.naflex_sequence_lengths is not None:
        raise ValueError(
            f"`naflex_sequence_lengths` applies to NaFlex presets; `preset`="
            f"{config.preset!r} has a fixed-resolution image tower."
        )
    run.preprocessor = SigLIP2Preprocessor.from_preset(run.preset_path)
    sd, mp = teacher_losses(run.backbone.vision_encoder, config.self_distillation,
                            config.masked_prediction)
    run.self_distillation, run.masked_prediction = sd, mp
    if (sd or mp) and config.naflex_from is not None:
        check_naflex_after_teacher(SELF_DISTILLATION_START, config.naflex_from,
                                   config.steps)
    run.pretrainer = SigLIP2Pretrainer(
        run.backbone, decoder="locca" if config.decoder else None, self_distillation=sd,
        masked_prediction=mp, seed=config.seed, curator=run.curator,
        local_image_size=local_crop_size(run.backbone.vision_encoder) if sd else None,
    )
    run.pretrainer.compile(learning_rate=config.learning_rate, total_steps=config.steps)


def _restore(config, run):
    """JAX: the newest complete orbax checkpoint (atomic, sharded, multi-host); other
    backends: Keras' BackupAndRestore (.weights.h5, one host)."""
    if keras.backend.backend() == "jax":
        run.start_step, run.checkpoints = restore_latest(run.pretrainer, run.backup_dir)
    else:
        run.start_step = _restored_step(run.pretrainer, run.backup_dir)
    if run.start_step >= config.steps:
        raise ValueError(
            f"The backup in {run.backup_dir} is already at step {run.start_step} >= "
            f"steps={config.steps}; delete it or choose a larger `steps`."
        )


def _make_dataset(config, run, naflex_stage=False):
    """The image-text dataset of this host's share, with the views the losses need,
    starting at the next unseen batch; `naflex_stage`: the NaFlex stage's views of a
    fixed-resolution run (`naflex_stage.py`), from its switch step."""
    if config.mesh is None:
        run.num_hosts, run.host_index = default_host()
    pretrainer, preprocessor = run.pretrainer, run.preprocessor
    start_batch = max(_step_of(pretrainer), run.start_step)
    if naflex_stage:
        lengths = stage_lengths(config)
        kwargs = naflex_views(pretrainer.decoder, lengths)
        preprocessor = naflex_preprocessor(
            preprocessor, run.backbone.vision_encoder.patch_size, lengths)
    else:
        kwargs = dataset_views(
            run.backbone, pretrainer.decoder, run.self_distillation,
            run.masked_prediction, config.naflex_sequence_lengths)
    if pretrainer.decoder is not None:
        kwargs["locca_options"] = _locca_options(
            pretrainer.decoder, run.preprocessor.tokenizer)
    paths = run.data_paths
    dataset = image_text_dataset(
        paths if len(paths) > 1 else paths[0],
        preprocessor,
        batch_size=_host_batch_size(config, run),
        seed=config.seed,
        start_batch=start_batch,
        num_hosts=run.num_hosts,
        host_index=run.host_index,
        format=config.data_format,
        default_language=config.default_language,
        **kwargs,
        **balancing_options(config),
    )
    if naflex_stage:
        run.naflex_dataset = dataset
    else:
        run.dataset, run.data_kwargs = dataset, kwargs
    return dataset


def _fit(config, run, callbacks):
    """`fit` in epochs of `checkpoint_every` steps, from the restored step; one `fit`
    per phase of the run (`naflex_stage.phase_ends`: a NaFlex stage is a second phase
    on its own dataset)."""
    steps_per_epoch = run.checkpoint_every
    run.progress = _make_callbacks(config.steps, run.verbose)
    if run.checkpoints is not None:
        run.backup = CheckpointCallback(run.checkpoints, total_steps=config.steps)
    else:
        run.backup = keras.callbacks.BackupAndRestore(run.backup_dir)
    callbacks = [run.backup, run.progress, *(callbacks or [])]
    if run.pretrainer.uses_teacher:
        callbacks.insert(0, LossCurriculum(SELF_DISTILLATION_START, config.steps))
    if config.naflex_from is not None:
        callbacks.insert(0, naflex_switch(config))
    if run.pretrainer.decoder is not None:
        callbacks.append(LoccaTasksCheck(run.dataset))
    if run.verbose:
        print(_start_line(config, run))
    t1 = time.time()
    for phase, end in enumerate(phase_ends(config)):
        step = _step_of(run.pretrainer)
        if step >= end:
            continue
        dataset = run.dataset if phase == 0 else _make_dataset(config, run, True)
        run.progress.stop_at = end
        initial_epoch = step // steps_per_epoch if run.checkpoints is not None else 0
        run.pretrainer.fit(dataset, epochs=math.ceil(config.steps / steps_per_epoch),
                           steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                           verbose=0, shuffle=False, initial_epoch=initial_epoch)
    run.train_s = time.time() - t1


def _summary(config, run):
    logs = run.progress.last_logs
    summary = {
        "preset": str(config.preset),
        "data": [str(p) for p in run.data_paths],
        "steps": _step_of(run.pretrainer),
        "start_step": run.start_step,
        "batch_size": config.batch_size,
        "mesh": config.mesh,
        "num_hosts": run.num_hosts,
        "losses": list(run.pretrainer.active_terms),
        "naflex_sequence_lengths": (None if run.fixed
                                    else list(run.data_kwargs["naflex_sequence_lengths"])),
        "final_losses": {t: logs.get(f"{t}_loss") for t in LOSS_TERMS
                         if f"{t}_loss" in logs},
        "final_loss": logs.get("loss"),
        "loss_history": run.progress.records,
        "data_report": _report_dict(run.dataset),
        "out_dir": run.out_dir,
        "preset_path": run.preset_out,
        "summary_path": os.path.join(run.out_dir, "train_summary.json"),
        "config_path": os.path.join(run.out_dir, CONFIG_FILE),
        "config": config.get_config(),
        "seed": config.seed,
        "timings_s": {"train_s": run.train_s, "total_s": time.time() - run.t0,
                      **_checkpoint_timings(run.checkpoints, run.backup)},
    }
    summary["locca_tasks"] = (None if run.pretrainer.decoder is None
                              else _locca_tasks(run.dataset))
    summary["curation"] = _curation_summary(config, run)
    summary["balancing"] = balancing_statistics(run.dataset)
    summary["naflex_stage"] = (None if config.naflex_from is None else {
        "from": config.naflex_from, "switch_step": phase_ends(config)[0],
        "lengths": list(stage_lengths(config)),
        "data_report": _report_dict(run.naflex_dataset)})
    return summary


def _save(config, run):
    """Process 0 writes the trained preset (gathered across hosts), the summary and the
    config; the checkpoints are dropped once every host has seen them written."""
    trained = gathered_copy(run.pretrainer.backbone)  # on process 0; None on the others
    if run.host_index == 0:
        save_preset(trained, run.preset_out, tokenizer=run.preprocessor.tokenizer,
                    image_converter=preset_converter(trained, run.preprocessor,
                                                     stage_lengths(config)),
                    overwrite=True)
    summary = _summary(config, run)
    if run.host_index == 0:
        os.makedirs(run.out_dir, exist_ok=True)
        with open(summary["summary_path"], "w") as f:
            json.dump(summary, f, indent=2)
        config.save(summary["config_path"])
    if run.checkpoints is not None:
        _finish_checkpoints(run.checkpoints, run.host_index)
    return summary


# --------------------------------------------------------------------------- train
def train(
    preset=None,
    data=None,
    steps=DEFAULT_STEPS,
    batch_size=DEFAULT_BATCH_SIZE,
    out_dir="siglip2_train",
    mesh=None,
    decoder=True,
    self_distillation=None,
    masked_prediction=None,
    learning_rate=None,
    seed=0,
    checkpoint_every=DEFAULT_CHECKPOINT_EVERY,
    data_format=None,
    default_language="",
    naflex_sequence_lengths=None,
    callbacks=None,
    verbose=True,
    config=None,
    curate_with=None,
    curation_ratio=None,
    naflex_from=None,
    naflex_lengths=None,
    balance_attributes=None,
    balance_proxies=None,
):
    """Trains a preset on image-text data with the SigLIP 2 recipe and saves it.

    Args:
        preset ... naflex_sequence_lengths, curate_with ... naflex_lengths: the
            fields of `TrainConfig` (documented there): preset, data, steps, global
            batch size, output folder, mesh, the losses, learning rate, seed,
            checkpoint interval, data format and language, NaFlex sequence lengths,
            ACID curation (reference preset, kept fraction), the NaFlex stage (start
            fraction, sequence lengths), M4 balancing (attribute and proxy names).
        callbacks: extra `keras.callbacks.Callback`s for `fit`.
        verbose: progress bar and messages.
        config: a `TrainConfig` (or its `get_config()` dict, e.g.
            `TrainConfig.load("run/train_config.json")`) instead of the keyword
            arguments above.

    Returns:
        the summary dict (also written to `out_dir/train_summary.json`; the config goes
        to `out_dir/train_config.json`).
    """
    arguments = {k: v for k, v in locals().items()
                 if k not in ("callbacks", "verbose", "config")}
    config = config_from_arguments(config, arguments)
    preset_path, data_paths = config.check()
    run = _Run(preset_path=preset_path, data_paths=data_paths,
               out_dir=os.path.abspath(os.fspath(config.out_dir)),
               checkpoint_every=min(config.checkpoint_every, config.steps),
               verbose=verbose, t0=time.time())
    if config.mesh is not None:
        setup_hosts(config, run)
    _build_pretrainer(config, run)
    _restore(config, run)
    _make_dataset(config, run)
    _fit(config, run, callbacks)
    summary = _save(config, run)
    if run.verbose:
        print(_end_line(summary, run))
    return summary


def _checkpoint_timings(checkpoints, backup):
    if checkpoints is None:
        return {}
    return {"checkpoint_restore_s": checkpoints.last_restore_s,
            "checkpoint_save_s": list(backup.save_times)}


def _finish_checkpoints(checkpoints, host_index):
    """A finished run drops its checkpoints: every process waits for process 0 to have
    written the preset and the summary, then process 0 deletes them."""
    checkpoints.close()
    barrier("siglip2_train_written")
    if host_index == 0:
        checkpoints.delete_all()


def _report_dict(dataset):
    """The data report's counts (delivered / skipped by reason), when available."""
    report = getattr(dataset, "report", None)
    if report is None:
        return None
    for name in ("as_dict", "to_dict", "summary"):
        method = getattr(report, name, None)
        if callable(method):
            try:
                value = method()
                json.dumps(value)
                return value
            except Exception:  # noqa: BLE001 - the summary is informative only
                return None
    return None
