"""The progress of a `train` run: the optimizer step, one progress bar over all the
run's steps (and its phases, `naflex_stage.py`), the stop at the end of each phase,
and the step restored by Keras' `BackupAndRestore` on non-JAX backends."""

import os

import keras

from keras_siglip2.console import progress_bar
from keras_siglip2.distribution import to_numpy


def _step_of(model):
    return int(to_numpy(model.optimizer.iterations))


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


class TrainProgress(keras.callbacks.Callback):
    """One progress bar over all steps; keeps the last logs of each epoch and stops
    `fit` once the optimizer has made `total_steps` steps."""

    def __init__(self, total_steps, verbose=True):
        super().__init__()
        self.total_steps = total_steps
        self.stop_at = total_steps  # the end of the current phase of the run
        self.verbose = verbose
        self.records = []
        self.last_logs = {}
        self.step = 0
        self.bar = None

    def on_train_begin(self, logs=None):
        if self.bar is None:  # one bar over all phases of the run
            self.bar = progress_bar(self.total_steps, verbose=self.verbose)
        self.step = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:  # after BackupAndRestore has restored the step
            self.step = _step_of(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.last_logs = {k: float(to_numpy(v)) for k, v in (logs or {}).items()}
        loss = self.last_logs.get("loss")
        if self.bar is not None:
            self.bar.update(min(self.step, self.total_steps),
                            values=[] if loss is None else [("loss", loss)])
        if self.step >= min(self.stop_at, self.total_steps):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(to_numpy(v)) for k, v in (logs or {}).items()}
        self.records.append({"step": self.step, **logs})


def _make_callbacks(total_steps, verbose):
    return TrainProgress(total_steps, verbose)
