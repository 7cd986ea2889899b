"""`SigLIP2Pretrainer`, the `keras.Model` of the SigLIP 2 recipe (paper sec. 2.1-2.5):
construction, saving, compile / fit and the configuration. The loss terms, the teacher
stage, the resolution switch and the backend train steps live in the sibling modules
(see the package docstring).
"""

import keras
import numpy as np
from keras import ops

from keras_siglip2.checks import (
    check_fraction,
    check_int,
    check_number,
    check_positive,
    check_positive_int,
)
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.training.curation import resolve_curator
from keras_siglip2.training.losses import self_distillation as sd_module
from keras_siglip2.training.losses.distributed import SelectedSigLIPLoss
from keras_siglip2.training.pretrainer import batch_spec
from keras_siglip2.training.pretrainer.fitting import FittingMixin
from keras_siglip2.training.pretrainer.loss_terms import LossTermsMixin
from keras_siglip2.training.pretrainer.naflex import NaFlexMixin
from keras_siglip2.training.pretrainer.recipe import (
    CURATION_METRICS,
    MASK_RATIO,
    PARALLEL_PROBABILITY,
    TEACHER_MOMENTUM,
    check_local_image_size,
    default_head_dims,
    is_fixed_resolution,
    LOCCA_TASKS,
    resolve_locca_task_weights,
    resolve_loss_weights,
    resolve_teacher_losses,
)
from keras_siglip2.training.pretrainer.resolution import ResolutionMixin
from keras_siglip2.training.pretrainer.teacher import TeacherStageMixin


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Pretrainer(TeacherStageMixin, ResolutionMixin, NaFlexMixin, LossTermsMixin,
                        FittingMixin, keras.Model):
    """Trains a `SigLIP2Backbone` with the SigLIP 2 recipe.

    Args:
        backbone: `SigLIP2Backbone`. With a NaFlex image tower the batches carry its
            three inputs instead of "images", and only the sigmoid and LocCa losses
            apply (`self_distillation=False, masked_prediction=False`, as in the
            paper's NaFlex stage; no `ResolutionAdaptation`).
        decoder: `"locca"` (a `SigLIP2LocCaDecoder` sized from the text tower by
            `locca_decoder_for`), a decoder instance, or None (no LocCa loss).
        self_distillation: bool, the SILC loss (active once the curriculum reaches it).
        masked_prediction: bool, the TIPS loss (idem).
        loss_weights: dict overriding weights of "sigmoid", "locca", "silc" (alias
            "self_distillation"), "tips" (alias "masked_prediction"); see the module
            docstring for the defaults.
        chunk_size: int or None. Compute the sigmoid loss in text chunks of this size
            (never materializing the B x B logits).
        sigmoid_loss: form of the sigmoid loss, chosen when the train step is traced
            (`losses.distributed.SelectedSigLIPLoss`): "auto" (default) uses the
            ring across devices (`distributed_sigmoid_loss`, no device holds the
            global B x B logits) under an active `keras.distribution` distribution
            whose batch axis spans more than one device (JAX), else the chunked form
            with a `chunk_size`, else the plain one; "plain", "chunked" or
            "distributed" force a form (all give the same value and gradients).
        local_image_size: None, int or (height, width): the resolution at which the
            student sees SILC's local crops. None: the tower's resolution (crops are
            resized to it). A smaller size (DINO / SILC use 96 px crops for 224 px
            global views) makes each crop's forward pass cheaper: the crops are
            resized to it and the tower runs on them with its position embedding
            resized to their patch grid (`get_pooled_and_tokens(...,
            any_resolution=True)`). Fixed-resolution towers only.
        teacher_momentum: float in [0, 1), EMA momentum of the teacher (0.996).
        head_dims: (hidden, bottleneck, output) of the SILC / TIPS heads; default
            `default_head_dims(width)`.
        mask_ratio: fraction of patches masked for TIPS (0.5).
        parallel_probability: probability that a LocCa example is decoded in parallel
            (all mask tokens, no causal mask) instead of autoregressively (0.5).
        student_temperature, teacher_temperature, center_momentum: SILC / TIPS softmax
            temperatures (0.1, 0.04) and center momentum (0.9).
        seed: int, seeds the pretrainer's random draws (masks, parallel flags, head
            re-initialization).
        curator: None or an `ActiveCurator` (ACID, paper sec. 2.5). The dataset then
            delivers super-batches (`curator.super_batch_size(batch_size)` examples);
            each training step scores them with the learner and the curator's reference
            backbone and every loss trains on the kept `keep_ratio` fraction (inside
            the jitted step); evaluation (`evaluate`, `training=False`) uses whole
            batches. The reference backbone becomes a frozen, tracked sub-model
            (`pretrainer.reference_backbone`, `trainable=False`): its weights are
            non-trainable state of the step (never updated, not baked into the
            compiled step) and are saved with the pretrainer's weights (`save_weights`,
            `.keras`, `BackupAndRestore`); `get_config` holds the curator's config
            (the reference's config and `keep_ratio`). The trained backbone
            (`pretrainer.backbone`, `save_to_preset`) does not contain it. Training
            logs add "acid_learnability" (mean learnability of the kept examples) and
            "acid_kept_fraction".
        locca_task_weights: None (all 1.0), a dict {"captioning", "aref", "gcap": w}
            (missing tasks 1.0) or a 3-tuple in that order: the weights of the three
            LocCa tasks when the batch carries them per example ((B, 3, L) decoder
            fields); "locca" is their weighted mean over the tasks with any target
            token in the batch. The paper weights the three alike (LocCa trains all
            three on every image); (B, L) single-task batches ignore it.
        tips_head_dims: (hidden, bottleneck, output) of the TIPS heads; default
            `head_dims` (which then sizes the SILC heads only). See
            `default_head_dims` for DINO's 65,536 and iBOT's 8,192 outputs.
        teacher_temperature_start, teacher_temperature_warmup_steps: a linear warm-up
            of the SILC / TIPS teacher temperature from `teacher_temperature_start` to
            `teacher_temperature` over the first `teacher_temperature_warmup_steps`
            steps of the teacher stage (DINO: 0.04 -> 0.07 over its first 30 epochs;
            `recipe.warmed_up_temperature`). Default None / 0: no warm-up, the
            teacher temperature is fixed (the stage starts from a trained student).

    Calling the pretrainer on a batch returns its loss terms (a dict with "loss" and
    "<term>_loss" / "<term>_weight" entries); `fit` logs all of them every step.

    Example:
    ```python
    pretrainer = SigLIP2Pretrainer(backbone, decoder="locca")
    pretrainer.compile()  # the paper's optimizer; fit fills in the schedule length
    pretrainer.fit(dataset, epochs=10, steps_per_epoch=1000,
                   callbacks=[LossCurriculum(), ResolutionAdaptation(target_image_size=384)])
    trained = pretrainer.backbone  # (a new object after a resolution switch)
    ```
    """

    def __init__(
        self,
        backbone,
        decoder="locca",
        self_distillation=True,
        masked_prediction=True,
        loss_weights=None,
        chunk_size=None,
        sigmoid_loss="auto",
        local_image_size=None,
        teacher_momentum=TEACHER_MOMENTUM,
        head_dims=None,
        mask_ratio=MASK_RATIO,
        parallel_probability=PARALLEL_PROBABILITY,
        student_temperature=None,
        teacher_temperature=None,
        center_momentum=None,
        seed=None,
        curator=None,
        locca_task_weights=None,
        tips_head_dims=None,
        teacher_temperature_start=None,
        teacher_temperature_warmup_steps=0,
        **kwargs,
    ):
        if isinstance(backbone, dict):
            backbone = keras.layers.deserialize(backbone)
        if not isinstance(backbone, SigLIP2Backbone):
            raise TypeError(
                f"`backbone` must be a SigLIP2Backbone; got {type(backbone).__name__}."
            )
        vision = backbone.vision_encoder
        self_distillation, masked_prediction = resolve_teacher_losses(
            vision, bool(self_distillation), bool(masked_prediction))
        check_number("teacher_momentum", teacher_momentum, 0.0, 1.0, high_open=True)
        check_fraction("mask_ratio", mask_ratio)
        check_fraction("parallel_probability", parallel_probability)
        check_positive_int("chunk_size", chunk_size, allow_none=True)
        curator = resolve_curator(curator, backbone)
        super().__init__(dtype=_own_dtype(kwargs.pop("dtype", None)), **kwargs)
        self.backbone = backbone
        self.use_self_distillation = self_distillation
        self.use_masked_prediction = masked_prediction
        self._set_options(
            loss_weights=loss_weights, chunk_size=chunk_size, sigmoid_loss=sigmoid_loss,
            local_image_size=local_image_size, teacher_momentum=teacher_momentum,
            head_dims=head_dims, mask_ratio=mask_ratio,
            parallel_probability=parallel_probability,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature, center_momentum=center_momentum,
            seed=seed)
        self._set_curator(curator)
        self.locca_task_weights = resolve_locca_task_weights(locca_task_weights)
        self._set_teacher_schedule(tips_head_dims, teacher_temperature_start,
                                   teacher_temperature_warmup_steps)
        self._decoder_arg = decoder
        self.decoder = _make_decoder(decoder, backbone)
        self._build_teacher_parts(vision)
        self.seed_generator = keras.random.SeedGenerator(seed, name="pretrainer_seed")
        self._build_state(vision)
        self._build_sublayers()
        if self.uses_teacher:
            self.copy_student_to_teacher()
        self.built = True

    def _set_options(self, loss_weights, chunk_size, sigmoid_loss, local_image_size,
                     teacher_momentum, head_dims, mask_ratio, parallel_probability,
                     student_temperature, teacher_temperature, center_momentum, seed):
        vision = self.backbone.vision_encoder
        width = vision.hidden_dim
        self.loss_weights = resolve_loss_weights(loss_weights, width)
        self.chunk_size = chunk_size
        self.local_image_size = check_local_image_size(local_image_size, vision)
        self.teacher_momentum = float(teacher_momentum)
        self.mask_ratio = float(mask_ratio)
        self.parallel_probability = float(parallel_probability)
        self.student_temperature = float(student_temperature or sd_module.STUDENT_TEMPERATURE)
        self.teacher_temperature = float(teacher_temperature or sd_module.TEACHER_TEMPERATURE)
        self.center_momentum = float(
            sd_module.CENTER_MOMENTUM if center_momentum is None else center_momentum
        )
        self.seed = seed
        self.sigmoid_loss_fn = SelectedSigLIPLoss(sigmoid_loss, chunk_size=chunk_size)
        self.head_dims = tuple(head_dims or default_head_dims(width))
        if len(self.head_dims) != 3:
            raise ValueError(
                f"`head_dims` must be (hidden, bottleneck, output); got {head_dims!r}."
            )

    def _set_teacher_schedule(self, tips_head_dims, start, warmup_steps):
        self.tips_head_dims = tuple(tips_head_dims or self.head_dims)
        if len(self.tips_head_dims) != 3:
            raise ValueError("`tips_head_dims` must be (hidden, bottleneck, output); got "
                             f"{tips_head_dims!r}.")
        for name, dims in (("head_dims", self.head_dims), ("tips_head_dims",
                                                            self.tips_head_dims)):
            for dim in dims:
                check_positive_int(name, dim)
        self.teacher_temperature_warmup_steps = check_int(
            "teacher_temperature_warmup_steps", warmup_steps,
            minimum=0)
        self.teacher_temperature_start = None if start is None else float(
            check_positive("teacher_temperature_start", start))
        if (start is None) != (self.teacher_temperature_warmup_steps == 0):
            raise ValueError(
                "A teacher-temperature warm-up needs both `teacher_temperature_start` and "
                "`teacher_temperature_warmup_steps` > 0; got teacher_temperature_start="
                f"{start!r}, teacher_temperature_warmup_steps={warmup_steps!r}."
            )

    def _set_curator(self, curator):
        self.curator = curator
        self.reference_backbone = None
        if curator is not None:  # frozen, tracked: non-trainable state of the step
            curator.reference_backbone.trainable = False
            self.reference_backbone = curator.reference_backbone

    def _build_state(self, vision):
        """Own state (saved with the weights): the teacher stage, the resolution, the
        mask token, the centers; and the loss trackers."""
        # The variable keeps its first name, so that older checkpoints load.
        self.teacher_stage_active = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False,
            name="self_distillation_active",
        )
        fixed = is_fixed_resolution(vision)
        resolution = (*vision.image_size, vision.patch_size) if fixed else (0, 0, 0)
        self.vision_resolution = self.add_weight(
            shape=(3,), initializer=keras.initializers.Constant(np.array(resolution)),
            dtype="int32", trainable=False, name="vision_resolution",
        )
        self.mask_token = self.silc_center = self.tips_center = None
        if self.use_masked_prediction:
            self.mask_token = self.add_weight(
                shape=(vision.hidden_dim,),
                initializer=keras.initializers.RandomNormal(stddev=0.02), name="mask_token",
            )
        for term, used, dims in (("silc", self.use_self_distillation, self.head_dims),
                                 ("tips", self.use_masked_prediction, self.tips_head_dims)):
            if used:
                setattr(self, f"{term}_center", self.add_weight(
                    shape=(dims[2],), initializer="zeros", trainable=False,
                    name=f"{term}_center"))
        self.teacher_stage_steps = None
        if self.teacher_temperature_warmup_steps and self.uses_teacher:
            # Steps done in the teacher stage (the warm-up's clock), saved for resuming.
            self.teacher_stage_steps = self.add_weight(
                shape=(), initializer="zeros", dtype="float32", trainable=False,
                name="teacher_stage_steps")
        self._teacher_stage_on = False  # Python mirror of the stage (static in traces)
        self._naflex_from_images = False  # set by `switch_to_naflex`
        names = ["loss"] + [f"{n}_loss" for n in self.active_terms]
        if self.decoder is not None:  # logged with (B, 3, L) LocCa fields
            names += [f"locca_{task}_loss" for task in LOCCA_TASKS]
        if self.curator is not None:
            names += list(CURATION_METRICS)
        self._loss_trackers = {n: keras.metrics.Mean(name=n) for n in names}

    # ------------------------------------------------------------------ construction

    @property
    def fixed_resolution(self):
        """Whether the image tower is the fixed-resolution one (else NaFlex)."""
        return is_fixed_resolution(self.backbone.vision_encoder)

    @property
    def active_terms(self):
        """The loss terms this pretrainer is configured with."""
        terms = ["sigmoid"]
        if self.decoder is not None:
            terms.append("locca")
        if self.use_self_distillation:
            terms.append("silc")
        if self.use_masked_prediction:
            terms.append("tips")
        return terms

    def _build_sublayers(self):
        """Builds the heads and the decoder so that every variable exists before
        `compile` / `fit` (the optimizer is built from the trainable variables)."""
        width = self.backbone.vision_encoder.hidden_dim
        for head in (self.silc_head, self.teacher_silc_head, self.tips_head,
                     self.teacher_tips_head):
            if head is not None and not head.built:
                head(ops.zeros((1, width)))
        if self.decoder is not None and not self.decoder.built:
            num_tokens = self._num_image_tokens()
            self.decoder(
                ops.zeros((1, 2), "int32"),
                ops.zeros((1, num_tokens, width)),
                parallel=ops.zeros((1,), "int32"),
            )

    def _num_image_tokens(self):
        vision = self.backbone.vision_encoder
        if hasattr(vision, "grid_size"):
            return vision.grid_size[0] * vision.grid_size[1]
        return vision.max_num_patches

    # ------------------------------------------------------------------ batches

    def required_fields(self):
        """Batch fields needed by the configured losses (`batch_spec.required_fields`)."""
        return batch_spec.required_fields(self)

    def check_batch(self, batch):
        """Raises ValueError naming the first missing / malformed field
        (`batch_spec.check_batch`)."""
        batch_spec.check_batch(self, batch)

    # ------------------------------------------------------------------ saving

    def resolution_stage(self):
        """The saved resolution stage, `vision_resolution` as 3 ints: (h, w, patch)
        after the resolution switch, (G, max_num_patches, 0) after the NaFlex switch,
        zeros before either (`training.checkpoint` records it with each checkpoint)."""
        return [int(v) for v in ops.convert_to_numpy(self.vision_resolution)]

    def enter_resolution_stage(self, stage):
        """Rebuilds the towers for a saved `resolution_stage()` (the resolution switch
        at its size, or the NaFlex switch), so that the weights saved in that stage
        (loaded next) fit; nothing when the model is already in it."""
        height, width, patch = (int(v) for v in stage)
        vision = self.backbone.vision_encoder
        if patch and (
            (height, width) != tuple(vision.image_size) or patch != vision.patch_size
        ):
            self.adapt_resolution((height, width), patch)
        elif not patch and height and self.fixed_resolution:
            self.switch_to_naflex(max_num_patches=width, position_grid_size=height)

    def save_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        for i, v in enumerate(own):
            store[f"{i}"] = v
        # The seed generator's state, so that a resumed run draws the same masks.
        store[f"{len(own)}"] = self.seed_generator.state

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        if len(store.keys()) != len(own) + 1:
            raise ValueError(
                f"SigLIP2Pretrainer expected {len(own) + 1} own variables in the "
                f"checkpoint, found {len(store.keys())}: it was saved from a pretrainer "
                "configured differently (decoder / self_distillation / masked_prediction)."
            )
        index = {id(v): i for i, v in enumerate(own)}
        self.enter_resolution_stage(np.asarray(store[f"{index[id(self.vision_resolution)]}"]))
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])
        self.seed_generator.state.assign(store[f"{len(own)}"])
        self.sync_stage_from_variables()

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        decoder = self._decoder_arg
        if decoder is not None and not isinstance(decoder, str):
            decoder = keras.layers.serialize(decoder)
        config.update(
            {
                "backbone": keras.layers.serialize(self.backbone),
                "decoder": decoder,
                "self_distillation": self.use_self_distillation,
                "masked_prediction": self.use_masked_prediction,
                "loss_weights": dict(self.loss_weights),
                "chunk_size": self.chunk_size,
                "sigmoid_loss": self.sigmoid_loss_fn.mode,
                "local_image_size": None if self.local_image_size is None
                else list(self.local_image_size),
                "teacher_momentum": self.teacher_momentum,
                "head_dims": list(self.head_dims),
                "mask_ratio": self.mask_ratio,
                "parallel_probability": self.parallel_probability,
                "student_temperature": self.student_temperature,
                "teacher_temperature": self.teacher_temperature,
                "center_momentum": self.center_momentum,
                "seed": self.seed,
                "locca_task_weights": dict(zip(LOCCA_TASKS, self.locca_task_weights)),
                "tips_head_dims": list(self.tips_head_dims),
                "teacher_temperature_start": self.teacher_temperature_start,
                "teacher_temperature_warmup_steps": self.teacher_temperature_warmup_steps,
                # The reference backbone's config and keep_ratio; its weights are
                # saved with the pretrainer's weights (see `curator` above).
                "curator": None if self.curator is None
                else keras.saving.serialize_keras_object(self.curator),
            }
        )
        # After `switch_to_naflex`: the layout as built (see `NaFlexMixin`).
        config.update(getattr(self, "_config_before_naflex", None) or {})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("decoder"), dict):
            config["decoder"] = keras.layers.deserialize(config["decoder"])
        return cls(**config)


def _own_dtype(dtype):
    own_dtype = keras.dtype_policies.get(dtype or "float32")
    if own_dtype.name != "float32":
        raise ValueError(
            "SigLIP2Pretrainer computes its losses in float32: its `dtype` must be "
            f"'float32'; got {own_dtype.name!r}. Set the towers' precision on the "
            "backbone instead, e.g. SigLIP2Backbone.from_preset(..., "
            "dtype='mixed_bfloat16')."
        )
    return own_dtype


def _make_decoder(decoder, backbone):
    if isinstance(decoder, str):
        if decoder != "locca":
            raise ValueError(
                f"`decoder` must be 'locca', a decoder layer or None; got {decoder!r}."
            )
        return locca_decoder_for(backbone)
    return decoder
