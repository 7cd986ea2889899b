"""`SigLIP2Pretrainer`: the SigLIP 2 training recipe (paper sec. 2.1-2.4) as one
`keras.Model` whose custom `train_step` adds every loss of the recipe:

- sigmoid loss on the (pooled image, text) embeddings (sec. 2.1), weight 1;
- LocCa (sec. 2.2): a decoder cross-attending to the student's un-pooled image tokens
  predicts captions, referring-expression boxes (ARef) and grounded captions (GCap),
  weight 1;
- SILC self-distillation (sec. 2.3): an EMA teacher of the image tower sees the global
  view ("teacher_images", else the training image itself), the student sees
  `local_images`, both through a
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
- with LocCa: "decoder_token_ids", "decoder_targets", "decoder_weights" and optionally
  "decoder_prefix_mask", either (B, 3, L): the three LocCa tasks of every example
  (captioning, ARef, GCap, in the order of `LOCCA_TASKS`; an example without a region
  box has weight 0 on its ARef / GCap rows), decoded in ONE decoder pass with the
  three sequences stacked on the batch axis (3B rows, the image tokens repeated), and
  reported as "locca_<task>_loss" besides "locca_loss" (their `locca_task_weights`
  mean); or (B, L): one task per example (older pipelines), built with
  `training.data.locca_targets.make_locca_targets`; "locca_parallel" is (B,) (shared
  by an example's tasks) or (B, 3);
- with SILC: "local_images" (B, V, h, w, 3) float in [-1, 1]: V local crops per image,
  resized to the model resolution, or with `local_image_size` to that (smaller) size
  at which the student runs with its position embedding resized; give them at that
  size to avoid the resize;
- optional "teacher_images" (B, H, W, 3), same size and range as "images": SILC's global
  augmented view (random resized crop + flip + colour jitter of the same image), seen
  by the EMA teacher and, masked, by the TIPS student; without it both see "images";
- optional "tips_mask" (B, N) 0/1 and "locca_parallel" (B,) 0/1: the random choices of
  the step (drawn from the pretrainer's seed generator when absent; giving them makes a
  step fully deterministic, e.g. to compare backends). A "tips_mask" whose N is not the
  tower's current token count (a pipeline that drew it for the resolution before
  `ResolutionAdaptation`) is ignored and the mask drawn in the step for the current N.
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

Where each part lives (this package was one module; every name importable from it before
is importable from the package):
- `recipe.py`: LOSS_TERMS, the default loss weights and size factors, head sizes, and the
  rule that a NaFlex tower trains without SILC / TIPS (`resolve_teacher_losses`);
- `batch_spec.py`: the fields each loss needs (`required_fields`, `check_batch`);
- `loss_terms.py`: the backend-agnostic loss terms (`call` returns their dict);
- `teacher.py`: the EMA teacher, the SILC / TIPS heads and the teacher stage switch
  (`start_teacher_stage`; `start_self_distillation` is its deprecated alias);
- `resolution.py`: `adapt_resolution` and the optimizer-state carry-over;
- `naflex.py`: `switch_to_naflex`, the NaFlex stage at 90 % (sec. 2.4.2; the
  `training.naflex_switch.NaFlexSwitch` callback calls it);
- `fitting.py`: metrics, `compile`, `fit`; `train_steps.py`: the backend-specific parts
  of the step (JAX stateless gradients, TF GradientTape, torch autograd);
- `model.py`: the `keras.Model` itself (construction, saving, config).
"""

from keras_siglip2.layers.logit_head import l2_normalize
from keras_siglip2.training.pretrainer.batch_spec import check_batch, required_fields
from keras_siglip2.training.pretrainer.fitting import _num_batches  # noqa: F401 (tests)
from keras_siglip2.training.pretrainer.model import SigLIP2Pretrainer
from keras_siglip2.training.pretrainer.recipe import (
    BASE_LOSS_WEIGHTS,
    CURATION_METRICS,
    LOCCA_FIELDS,
    LOCCA_TASKS,
    LOSS_TERMS,
    MASK_RATIO,
    PARALLEL_PROBABILITY,
    SIZE_FACTORS,
    TEACHER_MOMENTUM,
    TEACHER_TERMS,
    default_head_dims,
    default_loss_weights,
    is_fixed_resolution,
    resolve_loss_weights,
    resolve_teacher_losses,
    size_factor,
)
from keras_siglip2.training.pretrainer.teacher import reinitialize

# Kept for one release: the package has one L2 normalizer, `layers.l2_normalize`.
safe_l2_normalize = l2_normalize

__all__ = [
    "BASE_LOSS_WEIGHTS",
    "CURATION_METRICS",
    "LOCCA_FIELDS",
    "LOCCA_TASKS",
    "LOSS_TERMS",
    "MASK_RATIO",
    "PARALLEL_PROBABILITY",
    "SIZE_FACTORS",
    "SigLIP2Pretrainer",
    "TEACHER_MOMENTUM",
    "TEACHER_TERMS",
    "check_batch",
    "default_head_dims",
    "default_loss_weights",
    "is_fixed_resolution",
    "reinitialize",
    "required_fields",
    "resolve_loss_weights",
    "resolve_teacher_losses",
    "safe_l2_normalize",
    "size_factor",
]
