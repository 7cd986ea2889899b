"""`SigLIP2Pretrainer`: the SigLIP 2 training recipe (paper sec. 2.1-2.4) as one
`keras.Model` whose custom `train_step` adds every loss of the recipe:

- sigmoid loss on the (pooled image, text) embeddings (sec. 2.1), weight 1;
- LocCa (sec. 2.2): a decoder cross-attending to the student's un-pooled image tokens
  predicts captions, referring-expression boxes (ARef) and grounded captions (GCap),
  weight 1;
- SILC self-distillation (sec. 2.3): an EMA teacher of the image tower sees the global
  view (the training image itself), the student sees `local_images`, both through a
  projection head on the pooled embedding, weight 1 x size factor;
- TIPS masked prediction (sec. 2.3): 50 % of the student's patch tokens are replaced by a
  learned mask token and matched, through a patch projection head, to the teacher's
  per-patch outputs at the masked positions, weight 0.25 x size factor. The mask token
  replaces the patch-stem output and the position embedding is added after it (as in
  iBOT / TIPS), so a masked token still knows where it is; the teacher sees the same
  image unmasked.

After each optimizer step the teacher (image tower + both heads, non-trainable
variables) moves to m * teacher + (1 - m) * student with the updated student, while
SILC / TIPS are active; the SILC / TIPS centers are updated from the teacher outputs.

The size factor is 0.25 / 0.5 / 1.0 / 0.5 for B / L / So400m / g (inferred from the
vision width 768 / 1024 / 1152 / 1536); any other width (tiny test and demo models) gets
1.0, the unscaled paper weights. `loss_weights` overrides any of them as given.

Sigmoid and LocCa losses use the original image, SILC / TIPS use extra views (local
crops, a masked copy), as the paper does. SILC and TIPS are switched on by
`LossCurriculum` at 80 % of training: the stage lives in non-trainable variables (saved
with the weights), multiplies the loss weights, and a switch costs one retrace of the
train step (the inactive losses are not computed at all before it). At the switch the
teacher is initialized from the student and the student's heads and mask token are
re-initialized (the paper adds them "randomly" at 80 %).

Batches are dicts:
- "images": (B, H, W, 3) float in [-1, 1] (a NaFlex tower takes its three inputs
  "pixel_patches", "patch_positions", "patch_mask" instead, and trains with the sigmoid
  and LocCa losses only, as the paper's NaFlex stage), "token_ids": (B, L) int32;
- with LocCa: "decoder_token_ids", "decoder_targets", "decoder_weights" (B, L) and
  optionally "decoder_prefix_mask" (B, L): one LocCa task per example, built with
  `training.data.locca_targets.make_locca_targets` (the `image_text_dataset` pipeline
  and the synthetic dataset draw captioning / ARef / GCap per example);
- with SILC: "local_images" (B, V, h, w, 3) float in [-1, 1]: V local crops per image,
  resized to the model resolution, or with `local_image_size` to that (smaller) size
  at which the student runs with its position embedding resized; give them at that
  size to avoid the resize;
- optional "tips_mask" (B, N) 0/1 and "locca_parallel" (B,) 0/1: the random choices of
  the step (drawn from the pretrainer's seed generator when absent; giving them makes a
  step fully deterministic, e.g. to compare backends).
Images whose size differs from the tower's current resolution are resized in the step
(antialiased bilinear), so one dataset can feed the stages before and after
`ResolutionAdaptation`.

Mixed precision: the backbone's dtype policy sets the precision of the towers, and the
teacher follows it, the SILC / TIPS heads too (in float32 under mixed_float16, see
`_head_dtype`), the LocCa decoder follows the text tower (`locca_decoder_for`). The
pretrainer's own arithmetic (loss terms, centers, EMA, the sigmoid loss from the
embeddings and float32 t, b, with the text tower's zero-initialized `head` projection in
float32: `SigLIP2TextEncoder.get_float32_embeddings`) is float32 whatever the policy, so
its own dtype policy is always float32. When a trainable part computes in float16
(`mixed_float16`), `compile` wraps the optimizer in a `keras.optimizers.LossScaleOptimizer`
(as `keras.Model.compile` does for a mixed_float16 model; `auto_scale_loss=False` turns it
off) and the train step scales the loss by the optimizer's `scale_loss` on every backend.
On JAX a step whose scaled gradients overflow changes nothing but the loss scale (it
halves): weights, teacher, centers and seed stay as they were, so the step is retried.

The loss code is backend-agnostic (`call` returns the dict of loss terms); the
backend-specific parts of the step (JAX stateless gradients, TF GradientTape, torch
autograd) are in `training/train_steps.py`.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_siglip2.layers.logit_head import l2_normalize
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder, image_size_pair
from keras_siglip2.training.resize import resize_images

# Loss-weight size factors for SILC / TIPS by vision width (B, L, So400m, g-opt).
SIZE_FACTORS = {768: 0.25, 1024: 0.5, 1152: 1.0, 1536: 0.5}
BASE_LOSS_WEIGHTS = {"sigmoid": 1.0, "locca": 1.0, "silc": 1.0, "tips": 0.25}
LOSS_TERMS = ("sigmoid", "locca", "silc", "tips")
_WEIGHT_ALIASES = {"self_distillation": "silc", "masked_prediction": "tips"}

# EMA momentum of the teacher. The paper defers to SILC, which follows DINO's 0.996
# (DINO raises it towards 1 over training; SILC / TIPS only run for the last 20 %).
TEACHER_MOMENTUM = 0.996
MASK_RATIO = 0.5
PARALLEL_PROBABILITY = 0.5

# Logged by training steps with an ACID curator (`curator=`).
CURATION_METRICS = ("acid_learnability", "acid_kept_fraction")

# Batch fields produced by make_locca_targets that the pretrainer reads.
LOCCA_FIELDS = ("decoder_token_ids", "decoder_targets", "decoder_weights")


# Kept for one release: the package has one L2 normalizer, `layers.l2_normalize`.
safe_l2_normalize = l2_normalize


def size_factor(vision_width):
    """0.25 / 0.5 / 1.0 / 0.5 for B / L / So400m / g widths; 1.0 for any other width."""
    return SIZE_FACTORS.get(int(vision_width), 1.0)


def default_loss_weights(vision_width):
    """The paper's loss weights for a vision tower of this width."""
    factor = size_factor(vision_width)
    weights = dict(BASE_LOSS_WEIGHTS)
    weights["silc"] *= factor
    weights["tips"] *= factor
    return weights


def default_head_dims(vision_width):
    """(hidden, bottleneck, output) sizes of the SILC / TIPS projection heads.

    The paper gives no sizes (it defers to SILC / TIPS, which use DINO / iBOT heads):
    `SigLIP2ProjectionHead`'s defaults (2048, 256, 4096) from the B width up, and
    (4 w, w, 256) for tiny towers of width w.
    """
    if vision_width >= 768:
        return (2048, 256, 4096)
    return (4 * vision_width, vision_width, 256)


def _scalar_weight(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(
            f"`loss_weights[{name!r}]` must be a finite number >= 0; got {value!r}."
        )
    return float(value)


def resolve_loss_weights(loss_weights, vision_width):
    weights = default_loss_weights(vision_width)
    if loss_weights is None:
        return weights
    if not isinstance(loss_weights, dict):
        raise TypeError(
            "`loss_weights` must be a dict with keys among "
            f"{list(LOSS_TERMS) + list(_WEIGHT_ALIASES)}; got {type(loss_weights).__name__}."
        )
    for key, value in loss_weights.items():
        name = _WEIGHT_ALIASES.get(key, key)
        if name not in LOSS_TERMS:
            raise ValueError(
                f"Unknown loss weight {key!r}; expected keys among "
                f"{list(LOSS_TERMS) + list(_WEIGHT_ALIASES)}."
            )
        weights[name] = _scalar_weight(key, value)
    return weights


_REINIT_ATTRS = ("kernel", "bias", "gamma", "beta", "embeddings")


def _reinitialize(layer, seed):
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


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Pretrainer(keras.Model):
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
        **kwargs,
    ):
        from keras_siglip2.models.backbone import SigLIP2Backbone
        from keras_siglip2.training.losses.distributed import SelectedSigLIPLoss
        from keras_siglip2.training.losses import self_distillation as sd_module

        if isinstance(backbone, dict):
            backbone = keras.layers.deserialize(backbone)
        if not isinstance(backbone, SigLIP2Backbone):
            raise TypeError(
                f"`backbone` must be a SigLIP2Backbone; got {type(backbone).__name__}."
            )
        vision = backbone.vision_encoder
        fixed = isinstance(vision, SigLIP2VisionEncoder)
        self_distillation, masked_prediction = bool(self_distillation), bool(masked_prediction)
        if (self_distillation or masked_prediction) and not fixed:
            raise ValueError(
                "SILC / TIPS need a fixed-resolution image tower (the paper trains NaFlex "
                "without them); pass self_distillation=False, masked_prediction=False for "
                f"a {type(vision).__name__}."
            )
        if not 0 <= teacher_momentum < 1:
            raise ValueError(
                f"`teacher_momentum` must lie in [0, 1); got {teacher_momentum!r}."
            )
        for name, value in (("mask_ratio", mask_ratio),
                            ("parallel_probability", parallel_probability)):
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must lie in [0, 1]; got {value!r}.")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"`chunk_size` must be a positive int or None; got {chunk_size!r}.")
        from keras_siglip2.training.curation import resolve_curator

        curator = resolve_curator(curator, backbone)

        own_dtype = keras.dtype_policies.get(kwargs.pop("dtype", None) or "float32")
        if own_dtype.name != "float32":
            raise ValueError(
                "SigLIP2Pretrainer computes its losses in float32: its `dtype` must be "
                f"'float32'; got {own_dtype.name!r}. Set the towers' precision on the "
                "backbone instead, e.g. SigLIP2Backbone.from_preset(..., "
                "dtype='mixed_bfloat16')."
            )
        super().__init__(dtype=own_dtype, **kwargs)
        width = vision.hidden_dim
        self.backbone = backbone
        self.loss_weights = resolve_loss_weights(loss_weights, width)
        self.chunk_size = chunk_size
        self.local_image_size = _check_local_image_size(local_image_size, vision)
        self.teacher_momentum = float(teacher_momentum)
        self.mask_ratio = float(mask_ratio)
        self.parallel_probability = float(parallel_probability)
        self.student_temperature = float(student_temperature or sd_module.STUDENT_TEMPERATURE)
        self.teacher_temperature = float(teacher_temperature or sd_module.TEACHER_TEMPERATURE)
        self.center_momentum = float(
            sd_module.CENTER_MOMENTUM if center_momentum is None else center_momentum
        )
        self.seed = seed
        self.curator = curator
        self.reference_backbone = None
        if curator is not None:  # frozen, tracked: non-trainable state of the step
            curator.reference_backbone.trainable = False
            self.reference_backbone = curator.reference_backbone
        self.sigmoid_loss_fn = SelectedSigLIPLoss(sigmoid_loss, chunk_size=chunk_size)
        self.use_self_distillation = self_distillation
        self.use_masked_prediction = masked_prediction
        self.head_dims = tuple(head_dims or default_head_dims(width))
        if len(self.head_dims) != 3:
            raise ValueError(
                f"`head_dims` must be (hidden, bottleneck, output); got {head_dims!r}."
            )

        # --- LocCa decoder.
        self._decoder_arg = decoder
        if isinstance(decoder, str):
            if decoder != "locca":
                raise ValueError(
                    f"`decoder` must be 'locca', a decoder layer or None; got {decoder!r}."
                )
            from keras_siglip2.models.locca_decoder import locca_decoder_for

            decoder = locca_decoder_for(backbone)
        self.decoder = decoder

        # --- SILC / TIPS heads, mask token, teacher, centers.
        self.silc_head = self.tips_head = None
        self.teacher_vision_encoder = None
        self.teacher_silc_head = self.teacher_tips_head = None
        if self_distillation:
            self.silc_head = self._make_head("silc_head")
            self.teacher_silc_head = self._make_head("teacher_silc_head", trainable=False)
        if masked_prediction:
            self.tips_head = self._make_head("tips_head")
            self.teacher_tips_head = self._make_head("teacher_tips_head", trainable=False)
        if self.uses_teacher:
            self.teacher_vision_encoder = self._make_teacher_encoder(vision)
        self.seed_generator = keras.random.SeedGenerator(seed, name="pretrainer_seed")

        # --- Own state (saved with the weights): curriculum stage, resolution,
        # mask token, centers.
        output_dim = self.head_dims[2]
        self.self_distillation_active = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False,
            name="self_distillation_active",
        )
        resolution = (*vision.image_size, vision.patch_size) if fixed else (0, 0, 0)
        self.vision_resolution = self.add_weight(
            shape=(3,), initializer=keras.initializers.Constant(np.array(resolution)),
            dtype="int32", trainable=False, name="vision_resolution",
        )
        self.mask_token = None
        if masked_prediction:
            self.mask_token = self.add_weight(
                shape=(width,), initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="mask_token",
            )
        self.silc_center = self.tips_center = None
        if self_distillation:
            self.silc_center = self.add_weight(
                shape=(output_dim,), initializer="zeros", trainable=False, name="silc_center"
            )
        if masked_prediction:
            self.tips_center = self.add_weight(
                shape=(output_dim,), initializer="zeros", trainable=False, name="tips_center"
            )
        self._self_distillation_on = False  # Python mirror of the stage (static in traces)
        names = ["loss"] + [f"{n}_loss" for n in self.active_terms]
        if curator is not None:
            names += list(CURATION_METRICS)
        self._loss_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._build_sublayers()
        if self.uses_teacher:
            self.copy_student_to_teacher()
        self.built = True

    # ------------------------------------------------------------------ construction

    @property
    def fixed_resolution(self):
        """Whether the image tower is the fixed-resolution one (else NaFlex)."""
        return isinstance(self.backbone.vision_encoder, SigLIP2VisionEncoder)

    @property
    def uses_teacher(self):
        return self.use_self_distillation or self.use_masked_prediction

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

    def _make_head(self, name, trainable=True):
        from keras_siglip2.training.heads import SigLIP2ProjectionHead

        hidden, bottleneck, output = self.head_dims
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

    # ------------------------------------------------------------------ teacher / stage

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
            self.self_distillation_active.value,
        )
        for (t, _), value in zip(pairs, new_values):
            t.assign(value)

    def copy_student_to_teacher(self):
        """teacher <- student (vision tower and heads)."""
        for t, s in self._teacher_pairs():
            t.assign(ops.copy(s.value))  # a copy: JAX must not see one buffer twice

    @property
    def self_distillation_started(self):
        """Whether SILC / TIPS are active (read from the saved stage variable)."""
        from keras_siglip2.distribution import to_numpy

        return bool(float(to_numpy(self.self_distillation_active.value)) > 0.5)

    def start_self_distillation(self):
        """The 80 % stage switch: re-initializes the student's SILC / TIPS heads and mask
        token, copies the student (tower + heads) into the teacher, resets the centers
        and activates the losses. Call outside a traced function (the
        `LossCurriculum` callback does, at the right step)."""
        if not self.uses_teacher:
            raise ValueError(
                "This pretrainer has neither self_distillation nor masked_prediction."
            )
        with self.editing_state():
            # Seeded by the (saved) seed-generator state, so that a run resumed from a
            # checkpoint re-initializes exactly as the uninterrupted run.
            from keras_siglip2.distribution import to_numpy

            state = np.asarray(to_numpy(self.seed_generator.state), np.int64)
            seed = int(np.sum(state * np.array([1, 7919][: state.size]))) % (2**31 - 1)
            for i, head in enumerate((self.silc_head, self.tips_head)):
                if head is not None:
                    _reinitialize(head, seed + 1000 * (i + 1))
            if self.mask_token is not None:
                init = keras.initializers.RandomNormal(stddev=0.02, seed=seed + 7)
                self.mask_token.assign(init(self.mask_token.shape, self.mask_token.dtype))
            for center in (self.silc_center, self.tips_center):
                if center is not None:
                    center.assign(ops.zeros(center.shape, center.dtype))
            self.copy_student_to_teacher()
            self.self_distillation_active.assign(1.0)
            self._self_distillation_on = True

    def sync_stage_from_variables(self):
        """Sets the Python mirror of the stage from the (possibly just restored)
        variables; rebuilds the train function if it changed."""
        on = self.uses_teacher and self.self_distillation_started
        if on != self._self_distillation_on:
            self._self_distillation_on = on
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

    # ------------------------------------------------------------------ resolution

    def adapt_resolution(self, image_size, patch_size=None):
        """The 95 % resolution switch of fixed-resolution towers (paper sec. 2.4).

        Resizes the learned position embedding to the new patch grid (bilinear) and,
        when `patch_size` changes (e.g. 16 -> 14), the patch stem by PI-resize; the
        teacher gets the same treatment. The towers are rebuilt at the new size, so
        `pretrainer.backbone` is a new `SigLIP2Backbone` afterwards (sharing the text
        tower). The optimizer keeps its step and moments; the moments of the resized
        position embedding are resized the same way, those of a PI-resized stem
        restart from zero.
        """
        from keras_siglip2.models.backbone import SigLIP2Backbone
        from keras_siglip2.training import resize
        from keras_siglip2.training.optimizers import clone_optimizer

        vision = self.backbone.vision_encoder
        if not isinstance(vision, SigLIP2VisionEncoder):
            raise ValueError(
                "Resolution adaptation applies to fixed-resolution towers; this backbone "
                f"has a {type(vision).__name__}."
            )
        height, width = image_size_pair(image_size)
        old_p = vision.patch_size
        new_p = old_p if patch_size is None else int(patch_size)
        if new_p < 1 or height < new_p or width < new_p:
            raise ValueError(
                f"`target_image_size`={image_size} and patch size {new_p} give no patch."
            )
        if (height, width) == tuple(vision.image_size) and new_p == old_p:
            return False
        old_grid = vision.grid_size
        new_grid = (height // new_p, width // new_p)

        def transform(variable_path, value, kind):
            """New value of a resized variable (kind: weight / slot)."""
            if variable_path.endswith("position_embedding/embeddings"):
                return resize.resize_position_embedding(value, old_grid, new_grid)
            if variable_path.endswith("patch_embedding/dense/kernel"):
                if kind == "slot":
                    return None  # zeros
                return resize.pi_resize_patch_kernel(value, old_p, new_p)
            return value

        def rebuilt_encoder(encoder, **extra):
            config = encoder.get_config()
            config.update(image_size=[height, width], patch_size=new_p, **extra)
            new = SigLIP2VisionEncoder.from_config(config)
            for new_w, old_w in zip(new.weights, encoder.weights):
                rel = old_w.path.split("/", 1)[-1]
                value = transform(rel, np.asarray(ops.convert_to_numpy(old_w.value)), "weight")
                new_w.assign(np.asarray(value).astype(new_w.dtype))
            new.trainable = encoder.trainable
            return new

        with self.editing_state():
            new_vision = rebuilt_encoder(vision)
            old_backbone = self.backbone
            new_backbone = SigLIP2Backbone(
                new_vision,
                old_backbone.text_encoder,
                temperature_init=old_backbone.temperature_init,
                bias_init=old_backbone.bias_init,
                dtype=old_backbone.dtype_policy,
                name=old_backbone.name,
            )
            for new_w, old_w in zip(new_backbone.logit_head.weights,
                                    old_backbone.logit_head.weights):
                new_w.assign(ops.copy(old_w.value))
            old_trainable = list(self.trainable_variables)
            self._replace_layer("backbone", new_backbone)
            if self.teacher_vision_encoder is not None:
                teacher = rebuilt_encoder(self.teacher_vision_encoder)
                self._replace_layer("teacher_vision_encoder", teacher)
            self.vision_resolution.assign(np.array([height, width, new_p], "int32"))

            optimizer = getattr(self, "optimizer", None)
            if optimizer is not None and optimizer.built:
                new_trainable = list(self.trainable_variables)
                old_paths = {id(n): o.path for n, o in zip(new_trainable, old_trainable)}
                new_optimizer = clone_optimizer(optimizer)
                new_optimizer.build(new_trainable)
                old_vars, new_vars = optimizer.variables, new_optimizer.variables
                if len(old_vars) != len(new_vars):
                    raise RuntimeError(
                        "Could not carry the optimizer state over the resolution switch "
                        f"({len(old_vars)} vs {len(new_vars)} variables)."
                    )
                resized = {}
                for n, o in zip(new_trainable, old_trainable):
                    if tuple(n.shape) != tuple(o.shape):
                        resized[tuple(o.shape)] = old_paths[id(n)]
                for new_v, old_v in zip(new_vars, old_vars):
                    value = np.asarray(ops.convert_to_numpy(old_v.value))
                    if tuple(new_v.shape) != tuple(old_v.shape):
                        path = resized.get(tuple(old_v.shape), "")
                        value = transform(path, value, "slot")
                        if value is None or tuple(np.shape(value)) != tuple(new_v.shape):
                            value = np.zeros(new_v.shape)
                    new_v.assign(np.asarray(value).astype(new_v.dtype))
                self.optimizer = new_optimizer
        return True

    def _replace_layer(self, attr, new):
        old = getattr(self, attr)
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self._tracker.replace_tracked_value("layers", old, new)
            setattr(self, attr, new)
        finally:
            if locked:
                self._tracker.lock()

    # ------------------------------------------------------------------ saving

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
        resolution = np.asarray(store[f"{index[id(self.vision_resolution)]}"])
        height, width, patch = (int(v) for v in resolution)
        vision = self.backbone.vision_encoder
        if patch and (
            (height, width) != tuple(vision.image_size) or patch != vision.patch_size
        ):
            # Saved after the resolution switch: rebuild the towers at that size first,
            # so that the backbone's weights (loaded next) fit.
            self.adapt_resolution((height, width), patch)
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])
        self.seed_generator.state.assign(store[f"{len(own)}"])
        self.sync_stage_from_variables()

    # ------------------------------------------------------------------ batches

    def required_fields(self):
        """Batch fields needed by the configured losses (also before they switch on,
        so that a wrong dataset fails at the first step and not at 80 %)."""
        fields = list(self.backbone.vision_input_names) + ["token_ids"]
        if self.decoder is not None:
            fields += list(LOCCA_FIELDS)
        if self.use_self_distillation:
            fields.append("local_images")
        return fields

    def check_batch(self, batch):
        """Raises ValueError naming the first missing / malformed field. With a
        `curator` the training batches are super-batches: the same fields with more
        examples (their size is checked by `curate`)."""
        if not isinstance(batch, dict):
            raise ValueError(
                "SigLIP2Pretrainer trains on dict batches with the fields "
                f"{self.required_fields()}; got a {type(batch).__name__}."
            )
        reasons = {
            "images": "every batch (the image tower)",
            "pixel_patches": "every batch (the NaFlex image tower)",
            "patch_positions": "every batch (the NaFlex image tower)",
            "patch_mask": "every batch (the NaFlex image tower)",
            "token_ids": "the sigmoid loss",
            "local_images": "the SILC self-distillation loss (self_distillation=True)",
        }
        for field in LOCCA_FIELDS:
            reasons[field] = "the LocCa loss (decoder='locca'; see make_locca_targets)"
        for field in self.required_fields():
            if field not in batch:
                raise ValueError(
                    f"The batch has no field {field!r}, needed by {reasons[field]}. "
                    f"Batch fields: {sorted(batch)}; required: {self.required_fields()}."
                )
        if not self.fixed_resolution:
            return  # the NaFlex tower checks its three inputs itself
        images = batch["images"]
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"Batch field 'images' must be (B, H, W, 3); got shape {tuple(images.shape)}."
            )
        if "local_images" in self.required_fields():
            local = batch["local_images"]
            if len(local.shape) != 5 or local.shape[-1] != 3:
                raise ValueError(
                    "Batch field 'local_images' must be (B, V, h, w, 3) (V local crops per "
                    f"image); got shape {tuple(local.shape)}."
                )
        token_ids = batch["token_ids"]
        if len(token_ids.shape) != 2:
            raise ValueError(
                f"Batch field 'token_ids' must be (B, L); got shape {tuple(token_ids.shape)}."
            )

    def _at_model_resolution(self, images):
        """Resizes (B, H, W, 3) images to the tower's resolution when they differ."""
        return resize_images(images, self.backbone.vision_encoder.image_size)

    def _random_parallel(self, batch_size):
        draw = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return ops.cast(ops.less(draw, self.parallel_probability), "int32")

    # ------------------------------------------------------------------ losses

    def call(self, inputs, training=False):
        """The loss terms of one batch (see the class docstring). With a `curator`, a
        training call first keeps the curated sub-batch of the super-batch `inputs`
        (ACID) and adds the `CURATION_METRICS`; evaluation uses the whole batch."""
        curation = {}
        if training and self.curator is not None:
            inputs, curation = self.curate(inputs)
        outputs = self.loss_terms(inputs, training=training)
        outputs.update(curation)
        return outputs

    def curate(self, super_batch):
        """(the kept sub-batch, {"acid_learnability": mean learnability of the kept
        examples, "acid_kept_fraction": kept / super-batch size}): the `curator`'s
        selection with the current learner (backend-agnostic; traced in the step)."""
        self.check_batch(super_batch)
        size = super_batch["token_ids"].shape[0]
        self.curator.check_super_batch_size(size)
        batch, indices, scores = self.curator.select_with_scores(
            self.backbone, super_batch, seed=self.seed_generator)
        kept = indices.shape[0]
        return batch, {
            "acid_learnability": ops.mean(ops.take(scores, indices, axis=0)),
            "acid_kept_fraction": ops.convert_to_tensor(kept / size, "float32"),
        }

    def loss_terms(self, inputs, training=False):
        """The loss terms of one (already curated) batch."""
        from keras_siglip2.training.losses import (
            locca_loss_from_features,
            masked_prediction_loss,
            self_distillation_loss,
            update_center,
        )
        from keras_siglip2.training.masking import random_patch_mask

        self.check_batch(inputs)
        vision = self.backbone.vision_encoder
        head = self.backbone.logit_head
        image_key_mask = None
        if self.fixed_resolution:
            images = self._at_model_resolution(inputs["images"])
            if self.decoder is not None:
                pooled, tokens = vision.get_pooled_and_tokens(images)
            else:
                pooled, tokens = self.backbone.get_vision_embeddings(images), None
        else:  # NaFlex: sigmoid + LocCa, padding tokens masked in pooling and decoder
            images = None
            naflex = {k: inputs[k] for k in self.backbone.vision_input_names}
            tokens = vision.get_tokens(naflex)
            image_key_mask = naflex["patch_mask"]
            pooled = vision.head(tokens, key_mask=image_key_mask)
        batch_size = ops.shape(inputs["token_ids"])[0]
        text = self.backbone.text_encoder.get_float32_embeddings(inputs["token_ids"])
        zimg = l2_normalize(ops.cast(pooled, "float32"))
        ztxt = l2_normalize(ops.cast(text, "float32"))
        terms = {"sigmoid": self.sigmoid_loss_fn(zimg, ztxt, head.log_temperature, head.bias)}

        if self.decoder is not None:
            parallel = inputs.get("locca_parallel")
            if parallel is None:
                parallel = self._random_parallel(batch_size)
            features = self.decoder(
                inputs["decoder_token_ids"],
                tokens,
                parallel=ops.cast(parallel, "int32"),
                image_key_mask=image_key_mask,
                prefix_mask=inputs.get("decoder_prefix_mask"),
                return_features=True,
            )
            output = self.decoder.logits_dense
            terms["locca"] = locca_loss_from_features(
                features, output.kernel, output.bias, inputs["decoder_targets"],
                inputs["decoder_weights"],
            )

        zero = ops.zeros((), "float32")
        if self.uses_teacher and self._self_distillation_on:
            teacher = self.teacher_vision_encoder
            t_pooled, t_tokens = teacher.get_pooled_and_tokens(images)
            t_pooled, t_tokens = ops.stop_gradient(t_pooled), ops.stop_gradient(t_tokens)
            temps = dict(
                student_temperature=self.student_temperature,
                teacher_temperature=self.teacher_temperature,
            )
            if self.use_self_distillation:
                local = inputs["local_images"]
                shape = ops.shape(local)
                num_views = local.shape[1]
                flat = ops.reshape(local, (-1, shape[2], shape[3], shape[4]))
                # At the tower's own size `any_resolution` is the plain forward pass;
                # at a smaller `local_image_size` the position embedding is resized.
                flat = resize_images(flat, self.local_image_size or vision.image_size)
                s_pooled = vision.get_pooled_and_tokens(flat, any_resolution=True)[0]
                s_logits = self.silc_head(s_pooled)
                s_logits = ops.reshape(s_logits, (batch_size, num_views, -1))
                s_logits = ops.transpose(s_logits, (1, 0, 2))  # (V, B, K)
                t_logits = ops.stop_gradient(self.teacher_silc_head(t_pooled))
                terms["silc"] = self_distillation_loss(
                    s_logits, t_logits, self.silc_center, **temps
                )
                if training:
                    self.silc_center.assign(
                        update_center(self.silc_center, t_logits, self.center_momentum)
                    )
            if self.use_masked_prediction:
                num_patches = self._num_image_tokens()
                mask = inputs.get("tips_mask")
                if mask is None:
                    mask = random_patch_mask(
                        batch_size, num_patches, self.mask_ratio, seed=self.seed_generator
                    )
                s_tokens = vision.get_tokens(
                    images, token_mask=mask, mask_token=self.mask_token
                )
                s_patch_logits = self.tips_head(s_tokens)
                t_patch_logits = ops.stop_gradient(self.teacher_tips_head(t_tokens))
                terms["tips"] = masked_prediction_loss(
                    s_patch_logits, t_patch_logits, mask, self.tips_center, **temps
                )
                if training:
                    self.tips_center.assign(
                        update_center(self.tips_center, t_patch_logits, self.center_momentum)
                    )
        else:
            for name in ("silc", "tips"):
                if name in self.active_terms:
                    terms[name] = zero

        stage = ops.cast(self.self_distillation_active, "float32")
        outputs = {}
        total = zero
        for name in self.active_terms:
            weight = ops.convert_to_tensor(self.loss_weights[name], "float32")
            if name in ("silc", "tips"):
                weight = weight * stage
            value = ops.cast(terms[name], "float32")
            total = total + weight * value
            outputs[f"{name}_loss"] = value
            outputs[f"{name}_weight"] = weight
        outputs["loss"] = total
        return outputs

    # ------------------------------------------------------------------ metrics

    @property
    def metrics(self):
        trackers = getattr(self, "_loss_trackers", None)
        if trackers is None:
            return []
        return list(trackers.values())

    def update_loss_metrics(self, outputs):
        """Updates the running means of the loss terms; returns the step's logs:
        the means of "loss" and every "<term>_loss", and each term's current
        effective weight."""
        logs = {}
        for name, tracker in self._loss_trackers.items():
            if name not in outputs:  # CURATION_METRICS: training steps only
                continue
            tracker.update_state(outputs[name])
            logs[name] = tracker.result()
        for name in self.active_terms:
            logs[f"{name}_weight"] = outputs[f"{name}_weight"]
        return logs

    # ------------------------------------------------------------------ training

    def compile(
        self,
        optimizer=None,
        learning_rate=None,
        weight_decay=None,
        clipnorm=None,
        total_steps=None,
        warmup_steps=None,
        auto_scale_loss=True,
        **kwargs,
    ):
        """Compiles with the paper's optimizer by default (`siglip2_optimizer`:
        AdamW, peak lr 1e-3, decoupled weight decay 1e-4, global clipnorm 1, warmup +
        cosine schedule). `total_steps=None` lets `fit` set the schedule length from
        `epochs x steps_per_epoch`. `loss` / `metrics` are not used: the losses are
        the recipe's. With `auto_scale_loss` (default) and a part that computes in
        float16, the optimizer is wrapped in a `LossScaleOptimizer` (module
        docstring)."""
        from keras_siglip2.training.optimizers import siglip2_optimizer

        for unused in ("loss", "metrics", "loss_weights"):
            if kwargs.get(unused) is not None:
                raise ValueError(
                    f"SigLIP2Pretrainer.compile() takes no `{unused}`: the recipe's losses "
                    "are built in (set them with the constructor's `loss_weights`)."
                )
            kwargs.pop(unused, None)
        if optimizer is None:
            options = {
                k: v
                for k, v in dict(
                    learning_rate=learning_rate, weight_decay=weight_decay,
                    clipnorm=clipnorm, total_steps=total_steps, warmup_steps=warmup_steps,
                ).items()
                if v is not None
            }
            optimizer = siglip2_optimizer(**options)
        elif any(v is not None for v in (learning_rate, weight_decay, clipnorm,
                                         total_steps, warmup_steps)):
            raise ValueError(
                "learning_rate / weight_decay / clipnorm / total_steps / warmup_steps "
                "configure the default optimizer; do not combine them with `optimizer=`."
            )
        optimizer = keras.optimizers.get(optimizer)
        if (
            auto_scale_loss
            and self.computes_in_float16
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
        super().compile(optimizer=optimizer, auto_scale_loss=auto_scale_loss, **kwargs)

    @property
    def computes_in_float16(self):
        """Whether a trainable part (a tower, the LocCa decoder) computes in float16,
        whose gradients need loss scaling."""
        parts = (self.backbone.vision_encoder, self.backbone.text_encoder, self.decoder)
        return any(p is not None and p.compute_dtype == "float16" for p in parts)

    def fit(self, x=None, y=None, epochs=1, callbacks=None, steps_per_epoch=None, **kwargs):
        """`keras.Model.fit`, plus: the default schedule's length is set from
        `epochs x steps_per_epoch` (or the dataset's length) when `compile` got no
        `total_steps`, and a `StopOnNonFiniteLoss` callback is added unless present."""
        from keras_siglip2.training.callbacks import StopOnNonFiniteLoss
        from keras_siglip2.training.optimizers import learning_rate_schedule_of

        schedule = learning_rate_schedule_of(getattr(self, "optimizer", None))
        if schedule is not None and schedule.total_steps is None:
            steps = steps_per_epoch or _num_batches(x, kwargs.get("batch_size"))
            if steps is None:
                raise ValueError(
                    "The learning-rate schedule needs the number of training steps: pass "
                    "`steps_per_epoch` to fit() or `total_steps` to compile()."
                )
            schedule.set_total_steps(int(epochs) * int(steps))
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
            # First, so that no checkpoint callback saves a non-finite step.
            callbacks.insert(0, StopOnNonFiniteLoss())
        self.sync_stage_from_variables()
        return super().fit(
            x, y, epochs=epochs, callbacks=callbacks, steps_per_epoch=steps_per_epoch, **kwargs
        )

    def train_step(self, *args):
        from keras_siglip2.training import train_steps

        return train_steps.train_step(self, *args)

    def test_step(self, *args):
        from keras_siglip2.training import train_steps

        return train_steps.test_step(self, *args)

    def predict_step(self, *args):
        raise NotImplementedError(
            "SigLIP2Pretrainer has no predictions: use `pretrainer.backbone` for "
            "embeddings, or call the pretrainer on a batch for its loss terms."
        )

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
                # The reference backbone's config and keep_ratio; its weights are
                # saved with the pretrainer's weights (see `curator` above).
                "curator": None if self.curator is None
                else keras.saving.serialize_keras_object(self.curator),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("decoder"), dict):
            config["decoder"] = keras.layers.deserialize(config["decoder"])
        return cls(**config)


def _check_local_image_size(size, vision):
    if size is None:
        return None
    if not hasattr(vision, "image_size"):
        raise ValueError(
            "`local_image_size` needs a fixed-resolution image tower (NaFlex towers "
            f"train without SILC); got local_image_size={size!r}."
        )
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        pair = tuple(pair)
        ok = len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= vision.patch_size
            for v in pair
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            "`local_image_size` must be None, an int or (height, width), each at least "
            f"the patch size {vision.patch_size}; got local_image_size={size!r}."
        )
    return pair


def _num_batches(data, batch_size=None):
    """Batches per epoch of a finite tf.data.Dataset, or of arrays / a dict of arrays
    batched by `batch_size` (Keras' default 32); None when unknown."""
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            n = int(data.cardinality())
            return n if n > 0 else None
    except ImportError:  # pragma: no cover
        pass
    first = data
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
    shape = getattr(first, "shape", None)
    if shape is None or not len(shape) or shape[0] is None:
        return None
    return max(1, math.ceil(int(shape[0]) / int(batch_size or 32)))
