"""ACID active data curation (paper sec. 2.5; Udandarao et al. 2024, "Active data
curation effectively distills large-scale multimodal models").

The data pipeline delivers a super-batch `1 / keep_ratio` times larger than the batch
the learner trains on. A frozen reference (teacher) model and the current learner both
score every example of the super-batch with the sigmoid loss; the learnability of an
example is

    learnability_i = learner_loss_i - reference_loss_i

(high where the learner still fails but the reference succeeds: learnable, clean
pairs; low for noisy pairs, which the reference finds hard too, and for pairs the
learner already knows). A `keep_ratio` fraction of the super-batch forms the training
batch. ACID and SigLIP 2 state a *filtering ratio* f, the fraction dropped (a super-batch
of B / (1 - f) for a batch of B): 0.5 for B/16 and 0.75 for B/32 in SigLIP 2 sec. 2.5,
i.e. keep ratios 0.5 and 0.25 (`PAPER_KEEP_RATIOS`; ACID is used for those two sizes
only, fine-tuning with the sigmoid loss only).

How the sub-batch is chosen (`selection`):

- "joint" (the default, as ACID does): JEST's blockwise sampling on the joint
  learnability of the sub-batch (`training/joint_selection.py`): the sigmoid loss of a
  sub-batch is a sum over its pairs, so learnability is the pairwise matrix
  A_ij = learner_loss(i, j) - reference_loss(i, j), and the sub-batch is drawn in
  `num_chunks` blocks, each with probabilities exp(conditional learnability given the
  blocks before it).
- "top_k": the per-example scores below, deterministic top-k (a simpler stand-in).

The per-example score of pair i (what "top_k" ranks and what the logs report) is the
row sum of A: image i against its own text and every other text of the super-batch. Everything is
`keras.ops` with static shapes (`top_k` of a fixed size), so `select` runs inside a
jitted JAX train step; the reference's scores carry no gradient.

`SigLIP2Pretrainer(backbone, curator=ActiveCurator(reference, keep_ratio))` does this in
its train step: the dataset delivers super-batches, the selection runs inside the step,
and every loss trains on the kept examples (see `SigLIP2Pretrainer`). An
`ActiveCurator` serializes with Keras (`get_config` / `from_config`, registered) when its
reference is a Keras layer (a `SigLIP2Backbone`): its config holds the reference's
config and `keep_ratio`; the reference's weights are saved by whoever tracks it (the
pretrainer saves them with its own weights).
"""

import math

import keras
from keras import ops

from keras_siglip2.layers import l2_normalize
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.training.joint_selection import DEFAULT_NUM_CHUNKS, joint_selection
from keras_siglip2.training.losses.sigmoid import pairwise_sigmoid_loss
from keras_siglip2.training.resize import resize_images
from keras_siglip2.checks import check_positive_int

# The paper's keep ratios (fraction of the super-batch trained on) per model size: one
# minus SigLIP 2's filtering ratios (0.5 for B/16, 0.75 for B/32, sec. 2.5).
PAPER_KEEP_RATIOS = {"B/16": 0.5, "B/32": 0.25}
SELECTIONS = ("joint", "top_k")


def at_tower_resolution(backbone, batch):
    """`batch` with its "images" resized (antialiased bilinear, clipped to [-1, 1]) to
    the fixed-resolution image tower's size when they differ; unchanged otherwise (a
    NaFlex tower, or a stand-in without `image_size`). The reference and the learner
    may have different resolutions."""
    size = getattr(getattr(backbone, "vision_encoder", None), "image_size", None)
    images = batch.get("images") if isinstance(batch, dict) else None
    if size is None or images is None or len(images.shape) != 4:
        return batch
    return {**batch, "images": resize_images(images, size)}


@keras.saving.register_keras_serializable(package="keras_siglip2")
class ActiveCurator:
    """Selects the most learnable sub-batch of a super-batch (ACID).

    Args:
        reference_backbone: a frozen `SigLIP2Backbone` (or any object with the same
            `get_vision_embeddings(inputs)`, `get_text_embeddings(token_ids)` and
            `logit_head.log_temperature` / `logit_head.bias`), e.g. a larger trained
            model. Its weights are never updated here.
        keep_ratio: float in (0, 1], the fraction of the super-batch kept (one minus
            the paper's filtering ratio: 0.5 for B/16, 0.25 for B/32).
        selection: "joint" (JEST blockwise sampling on the pairwise learnability, as
            ACID) or "top_k" (the top per-example scores).
        num_chunks: blocks of the "joint" sampling (16, as JEST).

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

    def __init__(self, reference_backbone, keep_ratio=0.5, selection="joint",
                 num_chunks=DEFAULT_NUM_CHUNKS):
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
                f"`keep_ratio` must be in (0, 1] (0.5 for B/16, 0.25 for B/32); got "
                f"keep_ratio={keep_ratio!r}."
            )
        if selection not in SELECTIONS:
            raise ValueError(f"`selection` must be one of {SELECTIONS}; got "
                             f"selection={selection!r}.")
        self.reference_backbone = reference_backbone
        self.keep_ratio = float(keep_ratio)
        self.selection = selection
        self.num_chunks = check_positive_int("num_chunks", num_chunks)

    # -------------------------------------------------------------------- sizes
    def super_batch_size(self, batch_size):
        """Examples to draw for a training batch of `batch_size`: ceil(B / keep_ratio)."""
        check_positive_int("batch_size", batch_size)
        return int(math.ceil(batch_size / self.keep_ratio - 1e-9))

    def num_selected(self, super_batch_size):
        """Examples kept from a super-batch: round(keep_ratio * size), at least 1."""
        return max(1, int(round(self.keep_ratio * int(super_batch_size))))

    def check_super_batch_size(self, super_batch_size):
        """Raises ValueError unless a super-batch of this (static) size can be curated:
        at least 2 examples kept (the sigmoid loss needs negatives) and, for
        `keep_ratio` < 1, at least one dropped."""
        if super_batch_size is None:
            raise ValueError(
                "ACID needs a static super-batch size (top-k of a fixed size inside a "
                "jitted step): batch with drop_remainder=True."
            )
        size = int(super_batch_size)
        kept = self.num_selected(size)
        if kept < 2 or (self.keep_ratio < 1.0 and kept >= size):
            smallest = 2
            while self.num_selected(smallest) < 2 or (
                self.keep_ratio < 1.0 and self.num_selected(smallest) >= smallest
            ):
                smallest += 1
            raise ValueError(
                f"The super-batch of {size} examples is too small for ACID with "
                f"keep_ratio={self.keep_ratio}: it would keep {kept} of them (at least 2 "
                "must be kept and, with keep_ratio < 1, at least one dropped). Draw "
                f"`curator.super_batch_size(batch_size)` examples per batch (at least "
                f"{smallest})."
            )
        return kept

    # -------------------------------------------------------------------- scores
    @staticmethod
    def pair_losses(backbone, batch):
        """(B, B) float32 sigmoid loss of every (image, text) pair of the (super-)batch
        under `backbone`."""
        if not isinstance(batch, dict) or "token_ids" not in batch:
            raise ValueError(
                "ACID scores dict batches with the vision inputs (e.g. 'images') and "
                f"'token_ids'; got {type(batch).__name__}"
                + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "") + "."
            )
        zimg = l2_normalize(ops.cast(
            backbone.get_vision_embeddings(at_tower_resolution(backbone, batch)), "float32"))
        ztxt = l2_normalize(ops.cast(backbone.get_text_embeddings(batch["token_ids"]), "float32"))
        head = backbone.logit_head
        return pairwise_sigmoid_loss(zimg, ztxt, head.log_temperature, head.bias)

    @classmethod
    def example_losses(cls, backbone, batch):
        """(B,) float32 per-example sigmoid loss of `backbone` over the (super-)batch."""
        return ops.sum(cls.pair_losses(backbone, batch), axis=1)

    def learnability_matrix(self, learner_backbone, batch):
        """(B, B) learner pair loss - reference pair loss, without gradient."""
        learner = self.pair_losses(learner_backbone, batch)
        reference = self.pair_losses(self.reference_backbone, batch)
        return ops.stop_gradient(learner - reference)

    def learnability(self, learner_backbone, batch):
        """(B,) learner loss - reference loss per example (row sums of
        `learnability_matrix`), without gradient."""
        return ops.sum(self.learnability_matrix(learner_backbone, batch), axis=1)

    def _indices(self, matrix, scores, seed):
        size = matrix.shape[0]
        if size is None:
            raise ValueError(
                "ACID needs a static super-batch size (top-k of a fixed size inside a "
                "jitted step): batch with drop_remainder=True."
            )
        k = self.num_selected(size)
        if self.selection == "joint":
            return joint_selection(matrix, k, self.num_chunks, seed=seed)
        _, indices = ops.top_k(scores, k, sorted=True)
        return ops.cast(indices, "int32")

    def select_indices(self, learner_backbone, batch, seed=None):
        """Indices (k,) int32 of the k = `num_selected(B)` examples kept: drawn by
        joint learnability (in the order drawn), or the most learnable first
        ("top_k"). `seed`: int or `keras.random.SeedGenerator` for "joint"."""
        matrix = self.learnability_matrix(learner_backbone, batch)
        return self._indices(matrix, ops.sum(matrix, axis=1), seed)

    @staticmethod
    def gather(batch, indices):
        """Every field of `batch` whose first axis is the batch size (that of
        "token_ids"), gathered at `indices`; other fields unchanged."""
        size = batch["token_ids"].shape[0]
        out = {}
        for key, value in batch.items():
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) >= 1 and shape[0] == size:
                out[key] = ops.take(value, indices, axis=0)
            else:
                out[key] = value
        return out

    def select(self, learner_backbone, batch, seed=None):
        """The curated training batch: every field of `batch` whose first axis is the
        super-batch size, gathered at `select_indices`; other fields unchanged."""
        return self.select_with_scores(learner_backbone, batch, seed=seed)[0]

    def select_with_scores(self, learner_backbone, batch, seed=None):
        """(`select`'s batch, its indices (k,), the per-example learnability (B,) of
        the super-batch), from one scoring pass."""
        matrix = self.learnability_matrix(learner_backbone, batch)
        scores = ops.sum(matrix, axis=1)
        indices = self._indices(matrix, scores, seed)
        return self.gather(batch, indices), indices, scores

    # -------------------------------------------------------------------- pairing
    def check_learner(self, learner_backbone):
        """Raises unless this curator's reference can score the batches of
        `learner_backbone` inside a pretrainer: a different `SigLIP2Backbone` sharing
        no variable with it, with the same image inputs and text vocabulary, and a
        text tower that takes the learner's token sequences."""
        reference = self.reference_backbone
        if not isinstance(reference, SigLIP2Backbone):
            raise TypeError(
                "A pretrainer's ACID reference must be a SigLIP2Backbone (its weights "
                "become frozen state of the train step); got "
                f"{type(reference).__name__}."
            )
        if reference is learner_backbone:
            raise ValueError(
                "The ACID reference backbone is the learner itself; pass a separate "
                "(e.g. larger or longer-trained) SigLIP2Backbone."
            )
        shared = {id(v) for v in reference.weights} & {id(v) for v in learner_backbone.weights}
        if shared:
            raise ValueError(
                f"The ACID reference backbone shares {len(shared)} variables with the "
                "learner; the reference must be a separate, frozen model."
            )
        if tuple(reference.vision_input_names) != tuple(learner_backbone.vision_input_names):
            raise ValueError(
                "The ACID reference and the learner take different image inputs "
                f"({list(reference.vision_input_names)} vs "
                f"{list(learner_backbone.vision_input_names)}): both must be "
                "fixed-resolution or both NaFlex."
            )
        ref_text, text = reference.text_encoder, learner_backbone.text_encoder
        if ref_text.vocabulary_size != text.vocabulary_size:
            raise ValueError(
                f"The ACID reference's text vocabulary ({ref_text.vocabulary_size}) differs "
                f"from the learner's ({text.vocabulary_size}): both must use the same "
                "tokenizer."
            )
        if ref_text.max_sequence_length < text.max_sequence_length:
            raise ValueError(
                f"The ACID reference's text tower takes at most "
                f"{ref_text.max_sequence_length} tokens, fewer than the learner's "
                f"{text.max_sequence_length}."
            )

    # -------------------------------------------------------------------- config
    def get_config(self):
        """{"reference_backbone": its Keras config, "keep_ratio": ...}. The reference's
        weights are not part of the config (a pretrainer saves them with its own)."""
        if not isinstance(self.reference_backbone, keras.layers.Layer):
            raise TypeError(
                "This ActiveCurator cannot be serialized: its reference is a "
                f"{type(self.reference_backbone).__name__}, not a Keras layer "
                "(a SigLIP2Backbone)."
            )
        return {"reference_backbone": keras.layers.serialize(self.reference_backbone),
                "keep_ratio": self.keep_ratio, "selection": self.selection,
                "num_chunks": self.num_chunks}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        reference = config.pop("reference_backbone")
        if isinstance(reference, dict):
            reference = keras.layers.deserialize(reference)
        return cls(reference, **config)

    def __repr__(self):
        return (f"ActiveCurator(reference={type(self.reference_backbone).__name__}, "
                f"keep_ratio={self.keep_ratio}, selection={self.selection!r})")


def resolve_curator(curator, learner_backbone):
    """The `curator` argument of `SigLIP2Pretrainer`: None, an `ActiveCurator` or its
    serialized config, checked against the learner (`ActiveCurator.check_learner`)."""
    if curator is None:
        return None
    if isinstance(curator, dict):
        curator = keras.saving.deserialize_keras_object(curator)
    if not isinstance(curator, ActiveCurator):
        raise TypeError(
            "`curator` must be an ActiveCurator (ACID, e.g. "
            "ActiveCurator(reference_backbone, keep_ratio=0.5)) or None; got "
            f"{type(curator).__name__}."
        )
    curator.check_learner(learner_backbone)
    return curator
