"""Resumable training checkpoints written with orbax-checkpoint, the JAX ecosystem's
multi-host checkpoint library (the paper trains on TPU pods, sec. 2; big_vision
checkpoints its sharded train state the same way).

A checkpoint holds the whole train state of a `SigLIP2Pretrainer` (or any compiled
Keras model): trainable and non-trainable variables (the towers, the LocCa decoder,
the SILC / TIPS heads, the EMA teacher, the curriculum stage variable, the seed
generators' states: the RNG) and the optimizer's variables (step counter, moments).
The data position is the optimizer step (`image_text_dataset(start_batch=step)`).
A pretrainer's resolution stage (after the 95 % resolution switch or the NaFlex switch)
is recorded in the checkpoint's metadata; restoring rebuilds the towers for it first.

- Sharded arrays are written shard by shard by the processes that hold them (no
  gathering onto one host); restoring reads each shard into the layout the variables
  already have.
- Atomic: orbax writes into a temporary folder (`<step>.orbax-checkpoint-tmp-*`) and
  renames it once every process has finished (on GCS, a commit marker); a process
  killed at any moment leaves the previous checkpoints intact, and the next start
  ignores (and removes) the unfinished folder.
- Every process of a multi-host run must take part in `save` and `restore` (they
  synchronize inside orbax).

`CheckpointCallback` saves at the end of every `fit` epoch; `restore_latest` loads the
newest complete checkpoint into a built model before `fit`.

JAX backend only (orbax stores `jax.Array`s).
"""

import os
import time

import keras

from keras_siglip2.distribution import to_numpy
_STATE = "state"
_META = "meta"


def _require_jax():
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Distributed checkpoints (orbax) need the JAX backend; got KERAS_BACKEND="
            f"{keras.backend.backend()!r}."
        )


def _groups(model):
    """{group: [variables]}: the train state, in a fixed order."""
    return {
        "trainable": list(model.trainable_variables),
        "non_trainable": list(model.non_trainable_variables),
        "optimizer": list(model.optimizer.variables),
    }


def _tree(model, leaf):
    """{group: {"00000": leaf(variable), ...}} in the variables' order (their paths,
    which carry auto-numbered layer names, go to the metadata)."""
    return {
        group: {f"{i:05d}": leaf(v) for i, v in enumerate(vs)}
        for group, vs in _groups(model).items()
    }


def _signature(model):
    """{group: [[path, shape, dtype], ...]}: what a checkpoint must match."""
    return {group: [[v.path, list(v.shape), str(v.dtype)] for v in vs]
            for group, vs in _groups(model).items()}


def _mismatch(saved, current):
    """A description of the first variable of `current` that a checkpoint of
    signature `saved` does not match (count, shape or dtype), or None."""
    for group, variables in current.items():
        theirs = saved.get(group, [])
        if len(theirs) != len(variables):
            return f"{len(theirs)} {group} variables in the checkpoint, {len(variables)} here"
        for (path, shape, dtype), (_, their_shape, their_dtype) in zip(variables, theirs):
            if shape != their_shape or dtype != their_dtype:
                return (f"{path!r} is {shape} {dtype} here, {their_shape} {their_dtype} in "
                        "the checkpoint")
    return None


def _sync(model):
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):
        sync()  # during `fit`, JAX keeps the state outside the variables


class Checkpoints:
    """The checkpoints of one run in `directory` (local path or `gs://...`), keeping
    the newest `max_to_keep` complete ones."""

    def __init__(self, directory, max_to_keep=2):
        _require_jax()
        import orbax.checkpoint as ocp  # lazy: JAX backend only (orbax stores jax.Arrays)

        self.directory = os.path.abspath(directory) if "://" not in str(directory) else str(
            directory)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                cleanup_tmp_directories=True,  # unfinished writes of a killed run
                enable_async_checkpointing=False,
            ),
        )
        self.last_save_s = None
        self.last_restore_s = None

    def latest_step(self):
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, model, step=None):
        """Writes the model's train state as checkpoint `step` (default: the optimizer
        step); returns the step."""
        _sync(model)
        if step is None:
            step = int(to_numpy(model.optimizer.iterations))
        t0 = time.time()
        ocp = self._ocp
        state = _tree(model, lambda v: v.value)
        meta = {"step": int(step), "variables": _signature(model)}
        if hasattr(model, "resolution_stage"):  # a pretrainer after a tower switch
            meta["resolution_stage"] = model.resolution_stage()
        self.manager.save(
            int(step),
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                       _META: ocp.args.JsonSave(meta)}),
            force=True,
        )
        self.manager.wait_until_finished()
        self.last_save_s = time.time() - t0
        return int(step)

    def restore(self, model, step=None):
        """Loads checkpoint `step` (default: the newest complete one) into the built
        model (variables keep their layouts); returns its step, or 0 when there is
        none."""
        import jax  # lazy: JAX backend only

        step = self.latest_step() if step is None else step
        if step is None:
            return 0
        ocp = self._ocp
        t0 = time.time()
        meta = self.manager.restore(step, args=ocp.args.Composite(
            **{_META: ocp.args.JsonRestore()}))[_META]
        if meta.get("resolution_stage") and hasattr(model, "enter_resolution_stage"):
            # Saved after the resolution or NaFlex switch: rebuild the towers first.
            model.enter_resolution_stage(meta["resolution_stage"])
        problem = _mismatch(meta.get("variables", {}), _signature(model))
        if problem:
            raise ValueError(
                f"The checkpoint {self.directory}/{step} was written by a different model "
                f"({problem}); resume with the same preset and options, or use another "
                "output folder."
            )

        def abstract(v):
            value = v.value
            return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)

        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(_tree(model, abstract))}))[_STATE]
        for group, variables in _groups(model).items():
            values = restored[group]
            for i, v in enumerate(variables):
                v.assign(values[f"{i:05d}"])
        self.last_restore_s = time.time() - t0
        return int(step)

    def close(self):
        self.manager.close()

    def delete_all(self):
        """Removes the checkpoint folder (call on one process, after `close`)."""
        from etils import epath  # lazy: JAX backend only (orbax's path library)

        path = epath.Path(self.directory)
        if path.exists():
            path.rmtree()


def restore_latest(model, directory):
    """Builds `model`'s optimizer if needed and loads the newest complete checkpoint in
    `directory`; returns its step (0 without one) and the `Checkpoints`."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(directory)
    return checkpoints.restore(model), checkpoints


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint (`Checkpoints.save`) at the end of every epoch of `fit`, but
    not once `total_steps` are done (the run then saves its result instead)."""

    def __init__(self, checkpoints, total_steps=None):
        super().__init__()
        self.checkpoints = checkpoints
        self.total_steps = total_steps
        self.save_times = []

    def on_epoch_end(self, epoch, logs=None):
        _sync(self.model)
        step = int(to_numpy(self.model.optimizer.iterations))
        if self.total_steps is not None and step >= self.total_steps:
            return
        self.checkpoints.save(self.model, step)
        self.save_times.append(self.checkpoints.last_save_s)
