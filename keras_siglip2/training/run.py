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
length.

Not covered: the 95 % resolution switch of fixed-resolution presets (the preset already
has its final resolution; use `ResolutionAdaptation` directly for that).
"""

import json
import math
import os
import time

DEFAULT_STEPS = 1000
DEFAULT_BATCH_SIZE = 32
DEFAULT_CHECKPOINT_EVERY = 500
LOSS_TERMS = ("sigmoid", "locca", "silc", "tips")


# --------------------------------------------------------------------------- checks
def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {name}={value!r}.")
    return value


def check_data_path(data):
    """Raises FileNotFoundError unless `data` (a path, folder, glob pattern or a list of
    them; local or a `gs://`-style URL) names at least one existing file."""
    import tensorflow as tf

    items = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
    if not items:
        raise FileNotFoundError(f"`data`: no data path given; got data={data!r}.")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"`data` must be a path or a list of paths; got {item!r}.")
        path = os.path.expanduser(os.fspath(item))
        if any(c in path for c in "*?["):
            if not tf.io.gfile.glob(path):
                raise FileNotFoundError(f"`data`: the pattern {path!r} matches no file.")
        elif not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"`data`: {path!r} does not exist (expected a CSV / JSONL file of "
                "image_path,caption, TFRecord or WebDataset shards, or a folder of them)."
            )
    return [os.path.expanduser(os.fspath(i)) for i in items]


def _mesh_data_axis(mesh):
    """The `batch` axis size a mesh spec names explicitly (None when inferred)."""
    for item in mesh.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "batch" and value.strip().lstrip("-").isdigit():
            size = int(value)
            return size if size > 0 else None
    return None


def _explicit_mesh_size(mesh):
    """Product of the axis sizes a mesh spec gives as positive integers."""
    size = 1
    for item in mesh.split(","):
        value = item.partition("=")[2].strip()
        if value.isdigit() and int(value) > 0:
            size *= int(value)
    return size


def check_arguments(preset, data, steps, batch_size, mesh=None, learning_rate=None,
                    checkpoint_every=DEFAULT_CHECKPOINT_EVERY):
    """Cheap checks of `train`'s arguments, before anything is loaded. Returns the
    resolved preset path and the list of data paths."""
    from keras_siglip2.presets import resolve_preset

    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("checkpoint_every", checkpoint_every)
    if learning_rate is not None and (
        isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
        or not (math.isfinite(learning_rate) and learning_rate > 0)
    ):
        raise ValueError(f"`learning_rate` must be a number > 0; got {learning_rate!r}.")
    if mesh is not None:
        if not isinstance(mesh, str) or not mesh.strip():
            raise ValueError(
                f"`mesh` must be a string like \"batch=4,model=2\"; got mesh={mesh!r}."
            )
        from keras_siglip2.distribution import make_mesh

        # Syntax errors (unknown axis, bad size) now, on stand-in devices; whether the
        # mesh fits the real devices is checked by `setup_distribution`.
        data_axis = _mesh_data_axis(mesh)
        make_mesh(mesh, devices=list(range(_explicit_mesh_size(mesh))))
        if data_axis is not None and batch_size % data_axis:
            raise ValueError(
                f"`batch_size`={batch_size} must be divisible by the 'batch' axis of "
                f"mesh={mesh!r} ({data_axis} devices); use a multiple of {data_axis}."
            )
    data_paths = check_data_path(data)
    return resolve_preset(preset), data_paths


# --------------------------------------------------------------------------- pieces
def _start_hosts():
    """`initialize_multihost()` on a multi-host run; a single host (no coordinator to
    discover) goes on alone. Returns the number of processes."""
    import keras

    from keras_siglip2.distribution import initialize_multihost

    if keras.backend.backend() != "jax":
        raise ValueError(
            "`mesh` (distributed training) needs the JAX backend; got KERAS_BACKEND="
            f"{keras.backend.backend()!r}."
        )
    import jax

    configured = any(os.environ.get(k) for k in (
        "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES"))
    try:
        return initialize_multihost()
    except (ValueError, RuntimeError) as e:
        text = str(e)
        if "only be called once" in text or "already" in text:
            return jax.process_count()
        if not configured and "coordinator_address" in text:
            return 1  # one host: nothing to start
        if not configured and "must be called before" in text:
            # JAX already runs in this process (e.g. `train` called from a notebook):
            # go on with the hosts it knows.
            import warnings

            warnings.warn(
                "`mesh`: JAX was initialized before `train`, so the multi-host runtime "
                f"was not started; training on {jax.process_count()} host(s). On a pod, "
                "call keras_siglip2.distribution.initialize_multihost() first.",
                stacklevel=3,
            )
            return jax.process_count()
        raise


def dataset_views(backbone, decoder, self_distillation, masked_prediction,
                  naflex_sequence_lengths=None):
    """`image_text_dataset` keyword arguments giving the batch fields the pretrainer
    needs: the image at the model resolution (or, for a NaFlex tower, NaFlex patches
    with the sequence length drawn per batch from `naflex_sequence_lengths`, default
    the paper's), SILC local crops, the TIPS mask, LocCa targets (matching the
    decoder's location bins and length)."""
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
    from keras_siglip2.training.data.pipeline import NAFLEX_SEQUENCE_LENGTHS

    if not isinstance(backbone.vision_encoder, SigLIP2VisionEncoder):
        return {
            "views": ("naflex",),
            "naflex_sequence_lengths": (NAFLEX_SEQUENCE_LENGTHS
                                        if naflex_sequence_lengths is None
                                        else tuple(naflex_sequence_lengths)),
            "locca": decoder is not None,
        }
    views = ["image"]
    kwargs = {}
    if self_distillation:
        views.append("local")
    if masked_prediction:
        views.append("masked")
        kwargs["patch_size"] = backbone.vision_encoder.patch_size
    kwargs["views"] = tuple(views)
    kwargs["locca"] = decoder is not None
    return kwargs


def _locca_options(decoder, tokenizer):
    return {
        "num_bins": int(decoder.vocabulary_size - tokenizer.vocabulary_size()),
        "sequence_length": int(decoder.max_sequence_length),
    }


def _restored_step(pretrainer, backup_dir):
    """Non-JAX backends: the optimizer step of the `BackupAndRestore` checkpoint in
    `backup_dir` (0 without one); loads it into `pretrainer` (BackupAndRestore loads it
    again at the start of fit)."""
    path = os.path.join(backup_dir, "latest.weights.h5")
    if not os.path.isfile(path):
        return 0
    if not pretrainer.optimizer.built:
        pretrainer.optimizer.build(pretrainer.trainable_variables)
    pretrainer.load_weights(path)
    return _step_of(pretrainer)


def _step_of(model):
    from keras_siglip2.distribution import to_numpy

    return int(to_numpy(model.optimizer.iterations))


def _data_fingerprint(data_paths):
    """[(file, size)] of every file the data paths name (folders listed, patterns
    expanded): equal on all hosts when they read the same data."""
    import tensorflow as tf

    files = []
    for path in data_paths:
        if any(c in path for c in "*?["):
            names = tf.io.gfile.glob(path)
        elif tf.io.gfile.isdir(path):
            names = [os.path.join(path, n) for n in tf.io.gfile.listdir(path)]
        else:
            names = [path]
        for name in sorted(names):
            size = None if tf.io.gfile.isdir(name) else tf.io.gfile.stat(name).length
            files.append([os.path.abspath(name) if "://" not in name else name, size])
    return files


def _check_same_command(num_hosts, **fields):
    """Mismatched commands across hosts fail at start-up, naming what differs."""
    if num_hosts > 1:
        from keras_siglip2.distribution import check_same_on_all_hosts

        check_same_on_all_hosts(fields)


def _make_callbacks(total_steps, verbose):
    import keras

    from keras_siglip2.distribution import to_numpy

    from keras_siglip2.console import progress_bar

    class TrainProgress(keras.callbacks.Callback):
        """One progress bar over all steps; keeps the last logs of each epoch and
        stops `fit` once the optimizer has made `total_steps` steps."""

        def __init__(self):
            super().__init__()
            self.records = []
            self.last_logs = {}
            self.step = 0
            self.bar = None

        def _iterations(self):
            return _step_of(self.model)

        def on_train_begin(self, logs=None):
            self.bar = progress_bar(total_steps, verbose=verbose)
            self.step = None

        def on_train_batch_begin(self, batch, logs=None):
            if self.step is None:  # after BackupAndRestore has restored the step
                self.step = self._iterations()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            self.last_logs = {k: float(to_numpy(v)) for k, v in (logs or {}).items()}
            loss = self.last_logs.get("loss")
            if self.bar is not None:
                self.bar.update(min(self.step, total_steps),
                                values=[] if loss is None else [("loss", loss)])
            if self.step >= total_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(to_numpy(v)) for k, v in (logs or {}).items()}
            self.records.append({"step": self.step, **logs})

    return TrainProgress()


# --------------------------------------------------------------------------- train
def train(
    preset,
    data,
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
):
    """Trains a preset on image-text data with the SigLIP 2 recipe and saves it.

    Args:
        preset: a preset name (`siglip2_base_patch16_224`) or a local preset directory
            with a tokenizer (`save_to_preset` / `siglip2 convert --tokenizer`).
        data: CSV / JSONL file of `image_path,caption`, TFRecord or WebDataset shards: a
            path, folder, glob pattern or list of them.
        steps: optimizer steps (the learning-rate schedule's length).
        batch_size: the global batch size.
        out_dir: output folder: `preset/` (the trained model), `train_summary.json`,
            `backup/` while training (for resumption).
        mesh: None (default device placement) or a mesh spec "batch=4,model=2" (JAX).
        decoder: bool, the LocCa decoder and its loss (sec. 2.2).
        self_distillation, masked_prediction: the SILC / TIPS losses from 80 % of the
            steps (sec. 2.3); None = as in the paper: on for fixed-resolution presets,
            off for NaFlex presets (True with a NaFlex preset is an error).
        learning_rate: the peak learning rate (None: the paper's 1e-3; use a much
            smaller one to fine-tune a released model).
        seed: seeds the data order, crops, masks and initializations.
        checkpoint_every: steps between backups (`out_dir/backup`).
        data_format: "csv", "jsonl", "tfrecord", "webdataset" or None (from file names).
        default_language: language of records without one.
        naflex_sequence_lengths: NaFlex presets only: the sequence lengths (patches
            per image) a batch draws from; None = the paper's (128, 256, 576, 784,
            1024).
        callbacks: extra `keras.callbacks.Callback`s for `fit`.
        verbose: progress bar and messages.

    Returns:
        the summary dict (also written to `out_dir/train_summary.json`).
    """
    preset_path, data_paths = check_arguments(
        preset, data, steps, batch_size, mesh, learning_rate, checkpoint_every
    )
    checkpoint_every = min(checkpoint_every, steps)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got seed={seed!r}.")
    if naflex_sequence_lengths is not None:
        lengths = (list(naflex_sequence_lengths)
                   if isinstance(naflex_sequence_lengths, (list, tuple)) else [])
        if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                              for n in lengths):
            raise ValueError(
                "`naflex_sequence_lengths` must be a non-empty list of positive ints "
                f"(e.g. [128, 256, 576, 784, 1024]); got {naflex_sequence_lengths!r}."
            )
    if out_dir is None or not str(out_dir).strip():
        raise ValueError(f"`out_dir` must be a folder path; got out_dir={out_dir!r}.")
    out_dir = os.path.abspath(os.fspath(out_dir))
    preset_out = os.path.join(out_dir, "preset")
    backup_dir = os.path.join(out_dir, "backup")
    if not os.path.isfile(os.path.join(preset_path, "tokenizer.json")) and os.path.isdir(
        preset_path
    ):
        raise FileNotFoundError(
            f"`preset`={preset!r} has no tokenizer (no tokenizer.json): training needs one. "
            "Convert again with `siglip2 convert ... --tokenizer gemma_tokenizer.model`."
        )

    import keras

    t0 = time.time()
    num_hosts, host_index = 1, 0
    if mesh is not None:
        num_hosts = _start_hosts()
        import jax

        host_index = jax.process_index()
        verbose = verbose and host_index == 0
        _check_same_command(
            num_hosts, preset=_preset_fingerprint(preset_path),
            data=_data_fingerprint(data_paths), steps=steps, batch_size=batch_size,
            mesh=mesh, decoder=bool(decoder), self_distillation=self_distillation,
            masked_prediction=masked_prediction, learning_rate=learning_rate, seed=seed,
            checkpoint_every=checkpoint_every, data_format=data_format,
            default_language=default_language,
            naflex_sequence_lengths=naflex_sequence_lengths, out_dir=out_dir)
        if batch_size % num_hosts:
            raise ValueError(
                f"`batch_size`={batch_size} (global) must be divisible by the number of "
                f"hosts ({num_hosts})."
            )
        from keras_siglip2.distribution import setup_distribution

        setup_distribution(mesh, batch_size=batch_size, backbone=preset_path)

    from keras_siglip2.convert.common import save_preset
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
    from keras_siglip2.preprocessing import SigLIP2Preprocessor
    from keras_siglip2.training.callbacks import LossCurriculum
    from keras_siglip2.training.data.pipeline import default_host, image_text_dataset
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    keras.utils.set_random_seed(seed)
    backbone = SigLIP2Backbone.from_preset(preset_path)
    fixed = isinstance(backbone.vision_encoder, SigLIP2VisionEncoder)
    if not fixed and (self_distillation or masked_prediction):
        raise ValueError(
            f"`preset`={preset!r} has a {type(backbone.vision_encoder).__name__}: NaFlex "
            "training uses the sigmoid and LocCa losses only (paper sec. 2.4.2); pass "
            "self_distillation=False / masked_prediction=False (or leave them None; on "
            "the command line drop --self-distillation / --masked-prediction)."
        )
    if fixed and naflex_sequence_lengths is not None:
        raise ValueError(
            f"`naflex_sequence_lengths` applies to NaFlex presets; `preset`={preset!r} "
            "has a fixed-resolution image tower."
        )
    preprocessor = SigLIP2Preprocessor.from_preset(preset_path)
    tokenizer = preprocessor.tokenizer
    sd = fixed if self_distillation is None else bool(self_distillation)
    mp = fixed if masked_prediction is None else bool(masked_prediction)
    pretrainer = SigLIP2Pretrainer(
        backbone, decoder="locca" if decoder else None, self_distillation=sd,
        masked_prediction=mp, seed=seed,
    )
    pretrainer.compile(learning_rate=learning_rate, total_steps=steps)
    # JAX: orbax checkpoints (atomic, sharded, multi-host); other backends: Keras'
    # BackupAndRestore (.weights.h5, one host).
    checkpoints = None
    if keras.backend.backend() == "jax":
        from keras_siglip2.training.checkpoint import restore_latest

        start_step, checkpoints = restore_latest(pretrainer, backup_dir)
    else:
        start_step = _restored_step(pretrainer, backup_dir)
    if start_step >= steps:
        raise ValueError(
            f"The backup in {backup_dir} is already at step {start_step} >= steps={steps}; "
            "delete it or choose a larger `steps`."
        )

    if mesh is None:
        num_hosts, host_index = default_host()
    data_kwargs = dataset_views(backbone, pretrainer.decoder, sd, mp,
                                naflex_sequence_lengths)
    if pretrainer.decoder is not None:
        data_kwargs["locca_options"] = _locca_options(pretrainer.decoder, tokenizer)
    dataset = image_text_dataset(
        data_paths if len(data_paths) > 1 else data_paths[0],
        preprocessor,
        batch_size=batch_size // num_hosts,
        seed=seed,
        start_batch=start_step,
        num_hosts=num_hosts,
        host_index=host_index,
        format=data_format,
        default_language=default_language,
        **data_kwargs,
    )

    steps_per_epoch = checkpoint_every
    epochs = math.ceil(steps / steps_per_epoch)
    progress = _make_callbacks(steps, verbose)
    if checkpoints is not None:
        from keras_siglip2.training.checkpoint import CheckpointCallback

        backup = CheckpointCallback(checkpoints, total_steps=steps)
    else:
        backup = keras.callbacks.BackupAndRestore(backup_dir)
    callbacks = [backup, progress, *(callbacks or [])]
    if pretrainer.uses_teacher:
        callbacks.insert(0, LossCurriculum(total_steps=steps))
    if verbose:
        terms = ", ".join(pretrainer.active_terms)
        resumed = f", resuming at step {start_step}" if start_step else ""
        print(f"Training {preset} for {steps} steps (batch {batch_size}; losses: {terms}"
              f"{resumed}).")
    t1 = time.time()
    initial_epoch = start_step // steps_per_epoch if checkpoints is not None else 0
    pretrainer.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                   callbacks=callbacks, verbose=0, shuffle=False,
                   initial_epoch=initial_epoch)
    train_s = time.time() - t1
    final_step = _step_of(pretrainer)

    from keras_siglip2.distribution import gathered_copy

    trained = gathered_copy(pretrainer.backbone)  # on process 0; None on the others
    if host_index == 0:
        save_preset(trained, preset_out, tokenizer=tokenizer,
                    image_converter=preprocessor.image_converter, overwrite=True)
    logs = progress.last_logs
    summary = {
        "preset": str(preset),
        "data": [str(p) for p in data_paths],
        "steps": final_step,
        "start_step": start_step,
        "batch_size": batch_size,
        "mesh": mesh,
        "num_hosts": num_hosts,
        "losses": list(pretrainer.active_terms),
        "naflex_sequence_lengths": (None if fixed
                                    else list(data_kwargs["naflex_sequence_lengths"])),
        "final_losses": {t: logs.get(f"{t}_loss") for t in LOSS_TERMS
                         if f"{t}_loss" in logs},
        "final_loss": logs.get("loss"),
        "loss_history": progress.records,
        "data_report": _report_dict(dataset),
        "out_dir": out_dir,
        "preset_path": preset_out,
        "summary_path": os.path.join(out_dir, "train_summary.json"),
        "seed": seed,
        "timings_s": {"train_s": train_s, "total_s": time.time() - t0,
                      **_checkpoint_timings(checkpoints, backup)},
    }
    if host_index == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(summary["summary_path"], "w") as f:
            json.dump(summary, f, indent=2)
    if checkpoints is not None:
        _finish_checkpoints(checkpoints, host_index)
    if verbose:
        print(f"Trained {final_step} steps (loss {summary['final_loss']}). Wrote preset "
              f"{preset_out} and {summary['summary_path']}.")
    return summary


def _preset_fingerprint(preset_path):
    """The preset's config.json text (a directory) or its name."""
    path = os.path.join(preset_path, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    return str(preset_path)


def _checkpoint_timings(checkpoints, backup):
    if checkpoints is None:
        return {}
    return {"checkpoint_restore_s": checkpoints.last_restore_s,
            "checkpoint_save_s": list(backup.save_times)}


def _finish_checkpoints(checkpoints, host_index):
    """A finished run drops its checkpoints: every process waits for process 0 to have
    written the preset and the summary, then process 0 deletes them."""
    from keras_siglip2.distribution import barrier

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
