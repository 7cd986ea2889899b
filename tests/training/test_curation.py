"""Tests of ACID active curation (training/curation.py): the curator picks the learnable
pairs of a super-batch, training on its picks beats uniform sampling on a noisy stream,
and it runs on a real (tiny) SigLIP2Backbone inside a jitted step."""

import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip2.training.curation import ActiveCurator
from tests.conftest import tiny_backbone, tiny_inputs


class LinearPair:
    """A stand-in backbone on feature vectors: "images" and "token_ids" are (B, D) float
    features, embedded by one matrix each (the curator only uses these methods)."""

    def __init__(self, w_img, w_txt, temperature=10.0, bias=-5.0):
        self.w_img, self.w_txt = w_img, w_txt
        self.logit_head = SimpleNamespace(log_temperature=math.log(temperature), bias=bias)

    def get_vision_embeddings(self, inputs):
        return ops.matmul(inputs["images"], self.w_img)

    def get_text_embeddings(self, token_ids):
        return ops.matmul(token_ids, self.w_txt)


def noisy_super_batch(rng, size, dim, rotation, clean_fraction=0.5):
    """Pairs whose text is the image feature rotated (clean) or an unrelated vector
    (noise-labelled). Returns the batch and the bool clean mask."""
    images = rng.normal(size=(size, dim)).astype("float32")
    clean = rng.permutation(size) < int(clean_fraction * size)
    texts = np.where(clean[:, None], images @ rotation,
                     rng.normal(size=(size, dim)).astype("float32"))
    return {"images": images, "token_ids": texts.astype("float32")}, clean


def rotation_matrix(rng, dim):
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q.astype("float32")


def test_selects_learnable_pairs():
    rng = np.random.default_rng(0)
    dim = 64  # random cosines have sd 1/8: the learner's scores vary little
    rotation = rotation_matrix(rng, dim)
    # The reference knows the mapping (clean pairs are easy for it, noisy ones hard);
    # the learner is random (every pair is hard for it).
    reference = LinearPair(np.eye(dim, dtype="float32"), rotation.T)
    learner = LinearPair(rng.normal(size=(dim, dim)).astype("float32"),
                         rng.normal(size=(dim, dim)).astype("float32"))
    curator = ActiveCurator(reference, keep_ratio=0.5)
    batch, clean = noisy_super_batch(rng, 64, dim, rotation)
    indices = np.asarray(ops.convert_to_numpy(curator.select_indices(learner, batch)))
    assert indices.shape == (32,) and len(set(indices.tolist())) == 32
    precision = clean[indices].mean()
    assert precision >= 0.9, precision
    selected = curator.select(learner, batch)
    np.testing.assert_array_equal(ops.convert_to_numpy(selected["images"]),
                                  batch["images"][indices])
    # Pairs the learner already knows are not worth training on either.
    knows = LinearPair(np.eye(dim, dtype="float32"), rotation.T)
    scores = ops.convert_to_numpy(curator.learnability(knows, batch))
    np.testing.assert_allclose(scores, 0.0, atol=1e-4)


def test_sizes_and_errors():
    reference = LinearPair(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"))
    assert ActiveCurator(reference, 0.5).super_batch_size(256) == 512
    assert ActiveCurator(reference, 0.75).super_batch_size(48) == 64
    assert ActiveCurator(reference, 0.75).num_selected(64) == 48
    with pytest.raises(ValueError, match="keep_ratio"):
        ActiveCurator(reference, keep_ratio=0.0)
    with pytest.raises(TypeError, match="SigLIP2Backbone"):
        ActiveCurator(object())
    with pytest.raises(ValueError, match="token_ids"):
        ActiveCurator(reference).example_losses(reference, {"images": np.zeros((2, 2))})


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the toy training loop uses jax.grad")
def test_curated_training_beats_uniform_sampling():
    """Same learner init, same noisy stream (half the pairs noise-labelled): after the
    same number of learner steps, training on the curator's picks gives a lower
    held-out loss on clean pairs than training on a uniform half of each super-batch."""
    import jax

    rng = np.random.default_rng(1)
    dim, batch_size, steps, lr = 32, 16, 60, 0.5
    rotation = rotation_matrix(rng, dim)
    curator = ActiveCurator(LinearPair(np.eye(dim, dtype="float32"), rotation.T), 0.5)
    init = (rng.normal(size=(dim, dim)).astype("float32") * 0.3,
            rng.normal(size=(dim, dim)).astype("float32") * 0.3)
    stream = [noisy_super_batch(rng, 2 * batch_size, dim, rotation)[0] for _ in range(steps)]
    held_out, _ = noisy_super_batch(rng, 64, dim, rotation, clean_fraction=1.0)

    def loss(params, batch):
        model = LinearPair(*params)
        return ops.mean(ActiveCurator.example_losses(model, batch))

    grad = jax.jit(jax.grad(loss))

    @jax.jit
    def curated(params, batch):
        return curator.select(LinearPair(*params), batch)

    def train(pick):
        params = init
        for super_batch in stream:
            batch = pick(params, super_batch)
            params = tuple(p - lr * g for p, g in zip(params, grad(params, batch)))
        return float(loss(params, held_out))

    uniform_loss = train(lambda params, b: {k: v[:batch_size] for k, v in b.items()})
    curated_loss = train(curated)
    start = float(loss(init, held_out))
    assert curated_loss < uniform_loss < start, (curated_loss, uniform_loss, start)


@pytest.mark.large
def test_real_backbone_select_in_jit():
    """On a real tiny SigLIP2Backbone, inside one jitted function (as in a JAX train
    step): the scores are the sigmoid per-example losses and select gathers every
    batch-sized field."""
    import jax

    if keras.backend.backend() != "jax":
        pytest.skip("jit through jax")
    backbone = tiny_backbone(image_size=16, patch_size=8, vision_width=32, text_width=32)
    reference = tiny_backbone(image_size=16, patch_size=8, vision_width=32, text_width=32,
                              seed=1)
    curator = ActiveCurator(reference, keep_ratio=0.75)
    inputs = tiny_inputs(batch=8, image_size=16)
    batch = {"images": inputs["images"], "token_ids": inputs["token_ids"][:8],
             "decoder_weights": np.arange(40, dtype="float32").reshape(8, 5)}

    @jax.jit
    def step(batch):
        selected = curator.select(backbone, batch)
        return (selected, curator.select_indices(backbone, batch),
                curator.learnability(backbone, batch),
                backbone.get_vision_embeddings(batch),
                backbone.get_text_embeddings(batch["token_ids"]),
                reference.get_vision_embeddings(batch),
                reference.get_text_embeddings(batch["token_ids"]))

    selected, indices, scores, zi, zt, ri, rt = (
        jax.tree_util.tree_map(np.asarray, out) for out in step(batch))
    assert indices.shape == (6,) and len(set(indices.tolist())) == 6
    assert selected["images"].shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(selected["decoder_weights"], batch["decoder_weights"][indices])
    np.testing.assert_allclose(selected["images"], batch["images"][indices])

    def losses(zimg, ztxt, head):
        zimg = zimg / np.linalg.norm(zimg, axis=-1, keepdims=True)
        ztxt = ztxt / np.linalg.norm(ztxt, axis=-1, keepdims=True)
        logits = zimg @ ztxt.T * np.exp(np.asarray(head.log_temperature)) + np.asarray(head.bias)
        labels = 2 * np.eye(len(zimg)) - 1
        return np.sum(np.logaddexp(0, -labels * logits), axis=1)  # -log_sigmoid

    expected = losses(zi, zt, backbone.logit_head) - losses(ri, rt, reference.logit_head)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.sort(indices), np.sort(np.argsort(-expected)[:6]))
