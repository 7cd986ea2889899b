"""The EMA teacher and the teacher stage of `SigLIP2Pretrainer` (paper sec. 2.3, after
SILC / TIPS): the SILC / TIPS projection heads, the teacher copy of the image tower and
its heads, the EMA update m * teacher + (1 - m) * student, and the 80 % switch that
turns the teacher stage on (SILC and TIPS together: re-initialized student heads and
mask token, teacher <- student, centers reset).

The stage was first named after SILC's self-distillation alone; the `self_distillation_*`
/ `start_self_distillation` names stay as deprecated aliases for one release (the saved
variable keeps its name "self_distillation_active", so checkpoints load unchanged).
"""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_siglip2.distribution import to_numpy
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training.heads import SigLIP2ProjectionHead

_REINIT_ATTRS = ("kernel", "bias", "gamma", "beta", "embeddings")


def reinitialize(layer, seed):
    """Draws fresh values for every variable of `layer`: kernels / biases / LayerNorm /
    embeddings from their own initializers, any other variable (e.g. the projection
    head's weight-normalized last kernel) from DINO's truncated normal (std 0.02); all
    seeded, so that two runs re-initialize alike."""
    done = set()
    offset = 0

    def assign(variable, init):
        nonlocal offset
        config = init.get_config()
        if "seed" in config:
            config["seed"] = int(seed) + offset
        fresh = init.__class__.from_config(config)
        variable.assign(fresh(variable.shape, variable.dtype))
        done.add(id(variable))
        offset += 1

    for sub in layer._flatten_layers(include_self=True):
        for attr in _REINIT_ATTRS:
            try:
                variable = getattr(sub, attr, None)
            except Exception:  # e.g. quantized or unbuilt properties
                continue
            init = getattr(sub, f"{attr}_initializer", None)
            if isinstance(variable, keras.Variable) and init is not None:
                assign(variable, init)
    for variable in layer.weights:
        if id(variable) not in done:
            assign(variable, keras.initializers.TruncatedNormal(stddev=0.02))


def _deprecated(old, new):
    warnings.warn(f"`{old}` is deprecated (kept for one release): use `{new}`.",
                  DeprecationWarning, stacklevel=3)


class TeacherStageMixin:
    """Teacher, heads and teacher-stage methods of `SigLIP2Pretrainer`."""

    @property
    def uses_teacher(self):
        return self.use_self_distillation or self.use_masked_prediction

    def _make_head(self, name, trainable=True, dims=None):
        hidden, bottleneck, output = dims or self.head_dims
        head = SigLIP2ProjectionHead(
            input_dim=self.backbone.vision_encoder.hidden_dim,
            hidden_dim=hidden,
            bottleneck_dim=bottleneck,
            output_dim=output,
            dtype=self._head_dtype(),
            name=name,
        )
        head.trainable = trainable
        return head

    def _head_dtype(self):
        """The vision tower's policy, or float32 when it computes in float16: the
        heads' bottleneck normalization has gradients of about 1 / ||x|| (3e3 at init
        in the tiny test models), which overflow float16 under loss scaling."""
        policy = self.backbone.vision_encoder.dtype_policy
        return "float32" if policy.compute_dtype == "float16" else policy

    @staticmethod
    def _make_teacher_encoder(vision, **overrides):
        config = vision.get_config()
        config.update(overrides)
        config["name"] = "teacher_vision_encoder"
        teacher = SigLIP2VisionEncoder.from_config(config)
        teacher.trainable = False
        return teacher

    def _build_teacher_parts(self, vision):
        """The SILC / TIPS heads (student and teacher) and the teacher tower."""
        self.silc_head = self.tips_head = None
        self.teacher_vision_encoder = None
        self.teacher_silc_head = self.teacher_tips_head = None
        if self.use_self_distillation:
            self.silc_head = self._make_head("silc_head")
            self.teacher_silc_head = self._make_head("teacher_silc_head", trainable=False)
        if self.use_masked_prediction:
            self.tips_head = self._make_head("tips_head", dims=self.tips_head_dims)
            self.teacher_tips_head = self._make_head(
                "teacher_tips_head", trainable=False, dims=self.tips_head_dims)
        if self.uses_teacher:
            self.teacher_vision_encoder = self._make_teacher_encoder(vision)

    # ------------------------------------------------------------------ EMA

    def _teacher_pairs(self):
        """(teacher variable, student variable) pairs of the EMA."""
        pairs = []
        if not self.uses_teacher:
            return pairs
        couples = [(self.teacher_vision_encoder, self.backbone.vision_encoder)]
        if self.use_self_distillation:
            couples.append((self.teacher_silc_head, self.silc_head))
        if self.use_masked_prediction:
            couples.append((self.teacher_tips_head, self.tips_head))
        for teacher, student in couples:
            t_weights, s_weights = teacher.weights, student.weights
            if len(t_weights) != len(s_weights):
                raise RuntimeError(
                    f"Teacher {teacher.name} has {len(t_weights)} weights, the student "
                    f"{student.name} {len(s_weights)}."
                )
            for t, s in zip(t_weights, s_weights):
                if tuple(t.shape) != tuple(s.shape):
                    raise RuntimeError(
                        f"Teacher weight {t.path} {tuple(t.shape)} does not match the "
                        f"student's {s.path} {tuple(s.shape)}."
                    )
                pairs.append((t, s))
        return pairs

    def teacher_index_pairs(self):
        """[(index in non_trainable_variables, index in trainable_variables)] of the
        EMA pairs, for the stateless (JAX) step."""
        non_trainable = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        trainable = {id(v): i for i, v in enumerate(self.trainable_variables)}
        return [(non_trainable[id(t)], trainable[id(s)]) for t, s in self._teacher_pairs()]

    def ema(self, teacher_values, student_values, active):
        """EMA of the teacher, applied only where `active` (the stage value) is set:
        m * teacher + (1 - m) * student. Backend-agnostic (lists of tensors)."""
        m = self.teacher_momentum
        active = ops.greater(ops.cast(active, "float32"), 0.5)
        return [
            ops.where(active, m * t + (1.0 - m) * ops.cast(s, t.dtype), t)
            for t, s in zip(teacher_values, student_values)
        ]

    def update_teacher(self):
        """Stateful EMA step (TF / torch train steps)."""
        pairs = self._teacher_pairs()
        if not pairs:
            return
        new_values = self.ema(
            [t.value for t, _ in pairs],
            [s.value for _, s in pairs],
            self.teacher_stage_active.value,
        )
        for (t, _), value in zip(pairs, new_values):
            t.assign(value)

    def copy_student_to_teacher(self):
        """teacher <- student (vision tower and heads)."""
        for t, s in self._teacher_pairs():
            t.assign(ops.copy(s.value))  # a copy: JAX must not see one buffer twice

    # ------------------------------------------------------------------ stage

    @property
    def teacher_stage_started(self):
        """Whether the teacher stage (SILC / TIPS) is on (read from the saved variable)."""
        return bool(float(to_numpy(self.teacher_stage_active.value)) > 0.5)

    def _stage_seed(self):
        """A seed from the (saved) seed-generator state, so that a run resumed from a
        checkpoint re-initializes exactly as the uninterrupted run."""
        state = np.asarray(to_numpy(self.seed_generator.state), np.int64)
        return int(np.sum(state * np.array([1, 7919][: state.size]))) % (2**31 - 1)

    def start_teacher_stage(self):
        """The 80 % stage switch: re-initializes the student's SILC / TIPS heads and mask
        token, copies the student (tower + heads) into the teacher, resets the centers
        and activates the losses. Call outside a traced function (the
        `LossCurriculum` callback does, at the right step)."""
        if not self.uses_teacher:
            raise ValueError(
                "This pretrainer has neither self_distillation nor masked_prediction."
            )
        with self.editing_state():
            seed = self._stage_seed()
            for i, head in enumerate((self.silc_head, self.tips_head)):
                if head is not None:
                    reinitialize(head, seed + 1000 * (i + 1))
            if self.mask_token is not None:
                init = keras.initializers.RandomNormal(stddev=0.02, seed=seed + 7)
                self.mask_token.assign(init(self.mask_token.shape, self.mask_token.dtype))
            for center in (self.silc_center, self.tips_center):
                if center is not None:
                    center.assign(ops.zeros(center.shape, center.dtype))
            self.copy_student_to_teacher()
            if self.teacher_stage_steps is not None:
                self.teacher_stage_steps.assign(0.0)
            self.teacher_stage_active.assign(1.0)
            self._teacher_stage_on = True

    def sync_stage_from_variables(self):
        """Sets the Python mirror of the stage from the (possibly just restored)
        variables; rebuilds the train function if it changed."""
        on = self.uses_teacher and self.teacher_stage_started
        if on != self._teacher_stage_on:
            self._teacher_stage_on = on
            self._reset_step_functions()

    def _reset_step_functions(self):
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)
        if getattr(self, "test_function", None) is not None:
            self.make_test_function(force=True)

    @contextlib.contextmanager
    def editing_state(self):
        """Context for changing variables (values, or the variables themselves) in
        the middle of `fit`: on JAX the state held by the fit loop is written back to
        the variables first and read again afterwards; the step functions are rebuilt."""
        jax_backend = keras.backend.backend() == "jax"
        if jax_backend and getattr(self, "_jax_state", None):
            self.jax_state_sync()
        yield
        if jax_backend:
            self._jax_state_synced = True
        self._reset_step_functions()

    # ------------------------------------------------- deprecated (one release)

    @property
    def self_distillation_active(self):
        """Deprecated alias of `teacher_stage_active`."""
        return self.teacher_stage_active

    @property
    def self_distillation_started(self):
        """Deprecated alias of `teacher_stage_started`."""
        return self.teacher_stage_started

    @property
    def _self_distillation_on(self):
        """Deprecated alias of `_teacher_stage_on` (read by older callbacks)."""
        return self._teacher_stage_on

    @_self_distillation_on.setter
    def _self_distillation_on(self, value):
        self._teacher_stage_on = value

    def start_self_distillation(self):
        """Deprecated alias of `start_teacher_stage` (it switches SILC and TIPS on)."""
        _deprecated("start_self_distillation()", "start_teacher_stage()")
        return self.start_teacher_stage()
