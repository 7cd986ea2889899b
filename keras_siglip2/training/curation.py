"""ACID active data curation (paper sec. 2.5; Udandarao et al. 2024, "Active data
curation effectively distills large-scale multimodal models").

The data pipeline delivers a super-batch `1 / keep_ratio` times larger than the batch
the learner trains on. A frozen reference (teacher) model and the current learner both
score every example of the super-batch with the sigmoid loss; the learnability of an
example is

    learnability_i = learner_loss_i - reference_loss_i

(high where the learner still fails but the reference succeeds: learnable, clean
pairs; low for noisy pairs, which the reference finds hard too, and for pairs the
learner already knows). The `keep_ratio` fraction with the highest learnability forms
the training batch (0.5 for B/16, 0.75 for B/32 in the paper; ACID is used for those
two sizes only, with the sigmoid loss only).

The per-example loss of pair i is the row sum of the sigmoid loss over the super-batch
(`losses.per_example_sigmoid_loss`): image i against its own text and every other
text, so scores are computed jointly over the whole super-batch. Everything is
`keras.ops` with static shapes (`top_k` of a fixed size), so `select` runs inside a
jitted JAX train step; the reference's scores carry no gradient.
"""

import math

from keras import ops

from keras_siglip2.layers import l2_normalize
from keras_siglip2.training.losses.sigmoid import per_example_sigmoid_loss

# The paper's keep ratios (fraction of the super-batch trained on) per model size.
PAPER_KEEP_RATIOS = {"B/16": 0.5, "B/32": 0.75}


class ActiveCurator:
    """Selects the most learnable sub-batch of a super-batch (ACID).

    Args:
        reference_backbone: a frozen `SigLIP2Backbone` (or any object with the same
            `get_vision_embeddings(inputs)`, `get_text_embeddings(token_ids)` and
            `logit_head.log_temperature` / `logit_head.bias`), e.g. a larger trained
            model. Its weights are never updated here.
        keep_ratio: float in (0, 1], the fraction of the super-batch kept (0.5 for
            B/16, 0.75 for B/32).

    Use: draw super-batches of `curator.super_batch_size(batch_size)` examples; in the
    train step, `batch = curator.select(learner_backbone, super_batch)` before the
    losses (every field of the super-batch whose first axis is the super-batch size is
    gathered, e.g. "images", "token_ids", LocCa fields).

    Example:
    ```python
    curator = ActiveCurator(reference_backbone, keep_ratio=0.5)
    ds = image_text_dataset(path, preprocessor, batch_size=curator.super_batch_size(256))
    batch = curator.select(learner_backbone, super_batch)  # 256 examples
    ```
    """

    def __init__(self, reference_backbone, keep_ratio=0.5):
        for attribute in ("get_vision_embeddings", "get_text_embeddings", "logit_head"):
            if not hasattr(reference_backbone, attribute):
                raise TypeError(
                    "`reference_backbone` must be a SigLIP2Backbone (it has no "
                    f"`{attribute}`); got {type(reference_backbone).__name__}."
                )
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not (
            0.0 < keep_ratio <= 1.0
        ):
            raise ValueError(
                f"`keep_ratio` must be in (0, 1] (0.5 for B/16, 0.75 for B/32); got "
                f"keep_ratio={keep_ratio!r}."
            )
        self.reference_backbone = reference_backbone
        self.keep_ratio = float(keep_ratio)

    # -------------------------------------------------------------------- sizes
    def super_batch_size(self, batch_size):
        """Examples to draw for a training batch of `batch_size`: ceil(B / keep_ratio)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        return int(math.ceil(batch_size / self.keep_ratio - 1e-9))

    def num_selected(self, super_batch_size):
        """Examples kept from a super-batch: round(keep_ratio * size), at least 1."""
        return max(1, int(round(self.keep_ratio * int(super_batch_size))))

    # -------------------------------------------------------------------- scores
    @staticmethod
    def example_losses(backbone, batch):
        """(B,) float32 per-example sigmoid loss of `backbone` over the (super-)batch."""
        if not isinstance(batch, dict) or "token_ids" not in batch:
            raise ValueError(
                "ACID scores dict batches with the vision inputs (e.g. 'images') and "
                f"'token_ids'; got {type(batch).__name__}"
                + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "") + "."
            )
        zimg = l2_normalize(ops.cast(backbone.get_vision_embeddings(batch), "float32"))
        ztxt = l2_normalize(ops.cast(backbone.get_text_embeddings(batch["token_ids"]), "float32"))
        head = backbone.logit_head
        return per_example_sigmoid_loss(zimg, ztxt, head.log_temperature, head.bias)

    def learnability(self, learner_backbone, batch):
        """(B,) learner loss - reference loss, without gradient."""
        learner = self.example_losses(learner_backbone, batch)
        reference = self.example_losses(self.reference_backbone, batch)
        return ops.stop_gradient(learner - reference)

    def select_indices(self, learner_backbone, batch):
        """Indices (k,) int32 of the k = `num_selected(B)` most learnable examples,
        most learnable first."""
        scores = self.learnability(learner_backbone, batch)
        size = scores.shape[0]
        if size is None:
            raise ValueError(
                "ACID needs a static super-batch size (top-k of a fixed size inside a "
                "jitted step): batch with drop_remainder=True."
            )
        _, indices = ops.top_k(scores, self.num_selected(size), sorted=True)
        return ops.cast(indices, "int32")

    def select(self, learner_backbone, batch):
        """The curated training batch: every field of `batch` whose first axis is the
        super-batch size, gathered at `select_indices`; other fields unchanged."""
        indices = self.select_indices(learner_backbone, batch)
        size = ops.shape(batch["token_ids"])[0]
        out = {}
        for key, value in batch.items():
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) >= 1 and shape[0] == size:
                out[key] = ops.take(value, indices, axis=0)
            else:
                out[key] = value
        return out

    def __repr__(self):
        return (f"ActiveCurator(reference={type(self.reference_backbone).__name__}, "
                f"keep_ratio={self.keep_ratio})")
