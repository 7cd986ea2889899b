"""Tests of ACID active curation (training/curation.py): the curator picks the learnable
pairs of a super-batch, training on its picks beats uniform sampling on a noisy stream,
it runs on a real (tiny) SigLIP2Backbone inside a jitted step, and inside
`SigLIP2Pretrainer(curator=...)`: the train step trains on exactly the kept examples,
the reference is frozen, tracked state (saved with the weights, not baked into the
compiled step), evaluation does not curate. The large test compares ACID with uniform
sampling in the demo setting (training/acid_comparison.py)."""

import json
import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip2.training.curation import ActiveCurator
from tests.conftest import tiny_backbone, tiny_inputs
from tests.training import pretrainer_helpers as helpers


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


@pytest.mark.parametrize("selection", ["top_k", "joint"])
def test_selects_learnable_pairs(selection):
    """Both selection rules keep mostly clean pairs (half the super-batch is clean): the
    reference knows the mapping, the learner does not. Measured precision: top-k 0.97;
    joint sampling (stochastic, and it also weighs pair interactions) 0.84-0.97 over 20
    seeds, mean 0.91. Asserted: >= 0.9 for top-k, >= 0.75 for joint (uniform: 0.5)."""
    rng = np.random.default_rng(0)
    dim = 64  # random cosines have sd 1/8: the learner's scores vary little
    rotation = rotation_matrix(rng, dim)
    # The reference knows the mapping (clean pairs are easy for it, noisy ones hard);
    # the learner is random (every pair is hard for it).
    reference = LinearPair(np.eye(dim, dtype="float32"), rotation.T)
    learner = LinearPair(rng.normal(size=(dim, dim)).astype("float32"),
                         rng.normal(size=(dim, dim)).astype("float32"))
    curator = ActiveCurator(reference, keep_ratio=0.5, selection=selection)
    batch, clean = noisy_super_batch(rng, 64, dim, rotation)
    indices = np.asarray(ops.convert_to_numpy(curator.select_indices(learner, batch, seed=3)))
    assert indices.shape == (32,) and len(set(indices.tolist())) == 32
    precision = clean[indices].mean()
    assert precision >= (0.9 if selection == "top_k" else 0.75), precision
    selected = curator.select(learner, batch, seed=3)
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
    # Super-batch sizes: at least 2 kept and, below keep_ratio 1, at least one dropped.
    assert ActiveCurator(reference, 0.5).check_super_batch_size(4) == 2
    assert ActiveCurator(reference, 1.0).check_super_batch_size(2) == 2
    with pytest.raises(ValueError, match=r"super-batch of 2 examples is too small.*at least 3"):
        ActiveCurator(reference, 0.5).check_super_batch_size(2)
    with pytest.raises(ValueError, match=r"keep 2 of them.*at least 3"):
        ActiveCurator(reference, 0.75).check_super_batch_size(2)
    with pytest.raises(ValueError, match="static super-batch size"):
        ActiveCurator(reference, 0.5).check_super_batch_size(None)
    # A stand-in reference cannot be serialized.
    with pytest.raises(TypeError, match="cannot be serialized.*LinearPair"):
        ActiveCurator(reference).get_config()
    with pytest.raises(ValueError, match=r"`selection` must be one of \('joint', 'top_k'\)"):
        ActiveCurator(reference, selection="best")
    with pytest.raises(ValueError, match="`num_chunks` must be an integer >= 1"):
        ActiveCurator(reference, num_chunks=0)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the toy training loop uses jax.grad")
@pytest.mark.parametrize("selection", ["top_k", "joint"])
def test_curated_training_beats_uniform_sampling(selection):
    """Same learner init, same noisy stream (half the pairs noise-labelled): after the
    same number of learner steps, training on the curator's picks gives a lower
    held-out loss on clean pairs than training on a uniform half of each super-batch."""
    import jax

    rng = np.random.default_rng(1)
    dim, batch_size, steps, lr = 32, 16, 60, 0.5
    rotation = rotation_matrix(rng, dim)
    curator = ActiveCurator(LinearPair(np.eye(dim, dtype="float32"), rotation.T), 0.5,
                            selection=selection)
    init = (rng.normal(size=(dim, dim)).astype("float32") * 0.3,
            rng.normal(size=(dim, dim)).astype("float32") * 0.3)
    stream = [noisy_super_batch(rng, 2 * batch_size, dim, rotation)[0] for _ in range(steps)]
    held_out, _ = noisy_super_batch(rng, 64, dim, rotation, clean_fraction=1.0)

    def loss(params, batch):
        model = LinearPair(*params)
        return ops.mean(ActiveCurator.example_losses(model, batch))

    grad = jax.jit(jax.grad(loss))

    seeds = iter(range(steps))

    @jax.jit
    def select(params, batch, seed):
        return curator.select(LinearPair(*params), batch, seed=seed)

    def curated(params, batch):
        return select(params, batch, np.asarray([next(seeds), 0], "uint32"))

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
    curator = ActiveCurator(reference, keep_ratio=0.75, selection="top_k")
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


# ------------------------------------------------------------------ in the pretrainer
KEEP = 0.5
SUPER_BATCH = 8


@pytest.fixture(scope="module")
def compilation(tmp_path_factory):
    restore = helpers.fast_compilation(tmp_path_factory.getbasetemp() / "jax_cache_acid")
    yield
    restore()


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def spread_text_head(backbone, seed):
    """The text head starts at zero (as big_vision), which makes every text embedding
    0 and every example equally (un)learnable: give it random values."""
    rng = np.random.RandomState(seed)
    for v in backbone.text_encoder.head.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))


def acid_and_plain_pretrainers(keep_ratio=KEEP, selection="top_k"):
    """(pretrainer with an ACID curator, plain pretrainer with the same trainable
    weights): tiny towers, LocCa on, no SILC / TIPS; plain SGD so that weights after a
    step differ only by the gradients' float32 rounding."""
    reference = helpers.tiny_backbone(seed=3)
    spread_text_head(reference, 3)
    acid = helpers.tiny_pretrainer(seed=0, self_distillation=False, masked_prediction=False,
                                   curator=ActiveCurator(reference, keep_ratio,
                                                         selection=selection))
    spread_text_head(acid.backbone, 0)
    plain = helpers.tiny_pretrainer(seed=1, self_distillation=False, masked_prediction=False)
    assert len(plain.trainable_variables) == len(acid.trainable_variables)
    for a, b in zip(plain.trainable_variables, acid.trainable_variables):
        assert tuple(a.shape) == tuple(b.shape)
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        a.assign(numpy(b))  # a copy: the JAX step donates its buffers
    for model in (acid, plain):
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    return acid, plain


def super_batch(seed):
    batch = helpers.tiny_batch(seed=seed, local=False, fixed_random=True, batch=SUPER_BATCH)
    del batch["tips_mask"]  # no TIPS here
    return batch


def expected_selection(pretrainer, batch):
    """The kept indices (most learnable first) and the learnability of every example,
    computed outside the train step with the current weights (one jitted function:
    eager Keras is slow here); asserts the k-th and (k+1)-th scores are apart (so
    float32 rounding in the step cannot swap them)."""
    import jax

    learnability = jax.jit(lambda b: pretrainer.curator.learnability(pretrainer.backbone, b))
    scores = numpy(learnability(batch))
    k = pretrainer.curator.num_selected(len(scores))
    order = np.argsort(-scores)
    assert scores[order[k - 1]] - scores[order[k]] > 1e-3, scores
    return order[:k], scores


def gathered(batch, indices):
    return {key: value[indices] for key, value in batch.items()}


def assert_same_step(acid, plain, acid_logs, plain_logs):
    for name in ("loss", "sigmoid_loss", "locca_loss"):
        assert acid_logs[name] == pytest.approx(plain_logs[name], rel=1e-5, abs=1e-5), name
    for a, b in zip(acid.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-5, atol=1e-5, err_msg=a.path)


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="expected_selection scores the super-batch with jax.jit")
def test_train_step_trains_on_exactly_the_kept_examples(compilation):
    """Two steps of the ACID pretrainer on super-batches of 8 equal two steps of a
    plain pretrainer on the 4 examples chosen by the curator (computed outside the
    step). Before the second step the reference's weights change: the compiled step
    must select with the new values (they are state, not compiled-in constants).
    Evaluation uses the whole super-batch; a super-batch too small is refused."""
    acid, plain = acid_and_plain_pretrainers()
    start = [numpy(v) for v in acid.trainable_variables]
    first = super_batch(1)
    kept, scores = expected_selection(acid, first)
    acid_logs = acid.train_on_batch(first, return_dict=True)
    plain_logs = plain.train_on_batch(gathered(first, kept), return_dict=True)
    assert_same_step(acid, plain, acid_logs, plain_logs)
    assert acid_logs["acid_kept_fraction"] == 0.5
    assert acid_logs["acid_learnability"] == pytest.approx(scores[kept].mean(), rel=1e-4)
    assert acid_logs["acid_learnability"] > scores.mean()  # kept: the most learnable
    assert any(not np.allclose(a, numpy(b)) for a, b in zip(start, acid.trainable_variables))

    second = super_batch(2)
    with_old_reference, _ = expected_selection(acid, second)
    for v in acid.reference_backbone.text_encoder.head.weights:
        v.assign(-numpy(v))
    kept, _ = expected_selection(acid, second)
    assert set(kept) != set(with_old_reference)  # the change matters to the selection
    acid_logs = acid.train_on_batch(second, return_dict=True)
    plain_logs = plain.train_on_batch(gathered(second, kept), return_dict=True)
    assert_same_step(acid, plain, acid_logs, plain_logs)

    # Evaluation does not curate: the loss of the whole super-batch, no ACID metrics.
    acid_eval = acid.evaluate(second, batch_size=SUPER_BATCH, return_dict=True, verbose=0)
    plain_eval = plain.evaluate(second, batch_size=SUPER_BATCH, return_dict=True, verbose=0)
    assert set(acid_eval) == set(plain_eval) and "acid_learnability" not in acid_eval
    for name in ("loss", "sigmoid_loss", "locca_loss"):
        assert acid_eval[name] == pytest.approx(plain_eval[name], rel=1e-5, abs=1e-5), name
    # A super-batch too small to curate fails at the first step, naming the sizes.
    with pytest.raises(ValueError, match="super-batch of 2 examples is too small"):
        acid.train_on_batch({key: value[:2] for key, value in second.items()})


def test_reference_is_frozen_state_saved_with_the_weights(compilation, tmp_path):
    acid, _ = acid_and_plain_pretrainers()
    reference = acid.reference_backbone
    assert reference is acid.curator.reference_backbone and not reference.trainable
    trainable = {id(v) for v in acid.trainable_variables}
    non_trainable = {id(v) for v in acid.non_trainable_variables}
    assert all(id(v) not in trainable and id(v) in non_trainable for v in reference.weights)
    before = [numpy(v) for v in reference.weights]
    learner_before = [numpy(v) for v in acid.backbone.weights]
    data = {k: np.concatenate([a, b]) for (k, a), b in
            zip(super_batch(1).items(), super_batch(2).values())}
    history = acid.fit(data, batch_size=SUPER_BATCH, epochs=1, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1 and "acid_learnability" in history.history
    for value, v in zip(before, reference.weights):
        np.testing.assert_array_equal(numpy(v), value, err_msg=v.path)
    assert any(not np.array_equal(a, numpy(b))
               for a, b in zip(learner_before, acid.backbone.weights))

    # Saved: the config holds the curator (reference config + keep_ratio), the weights
    # file the reference's weights.
    path = str(tmp_path / "acid.weights.h5")
    acid.save_weights(path)
    config = json.loads(json.dumps(acid.get_config()))
    assert config["curator"]["config"]["keep_ratio"] == KEEP
    restored = type(acid).from_config(config)
    assert isinstance(restored.curator, ActiveCurator) and restored.curator.keep_ratio == KEEP
    assert restored.reference_backbone is not reference
    assert not restored.reference_backbone.trainable
    restored.load_weights(path)
    for a, b in zip(reference.weights, restored.reference_backbone.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    for a, b in zip(acid.backbone.weights, restored.backbone.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    keras_file = str(tmp_path / "acid.keras")  # the whole pretrainer, curator included
    acid.save(keras_file)
    loaded = keras.saving.load_model(keras_file, compile=False)
    assert loaded.curator.keep_ratio == KEEP and not loaded.reference_backbone.trainable
    for a, b in zip(reference.weights, loaded.reference_backbone.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)


def test_pretrainer_rejects_bad_curators():
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    backbone = helpers.tiny_backbone(seed=0)
    options = dict(decoder=None, self_distillation=False, masked_prediction=False)
    with pytest.raises(TypeError, match="`curator` must be an ActiveCurator.*str"):
        SigLIP2Pretrainer(backbone, curator="acid", **options)
    stand_in = LinearPair(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"))
    with pytest.raises(TypeError, match="must be a SigLIP2Backbone.*LinearPair"):
        SigLIP2Pretrainer(backbone, curator=ActiveCurator(stand_in), **options)
    with pytest.raises(ValueError, match="is the learner itself"):
        SigLIP2Pretrainer(backbone, curator=ActiveCurator(backbone), **options)
    other_vocabulary = tiny_backbone(image_size=16, patch_size=8, vision_width=32,
                                     text_width=32)  # 1000 tokens, not 64
    with pytest.raises(ValueError, match="vocabulary"):
        SigLIP2Pretrainer(backbone, curator=ActiveCurator(other_vocabulary), **options)
    assert backbone.trainable  # the failed constructions froze nothing


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="traced with jax.jit")
def test_reference_at_another_resolution(compilation):
    """A 32 px reference scores the 16 px super-batch of a 16 px learner: its images are
    resized to the reference's resolution (antialiased bilinear, as tf.image.resize)."""
    import jax
    import tensorflow as tf

    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    reference = helpers.tiny_backbone(seed=3, image_size=32)
    spread_text_head(reference, 3)
    learner = helpers.tiny_backbone(seed=0)
    curator = ActiveCurator(reference, KEEP)
    SigLIP2Pretrainer(learner, decoder=None, self_distillation=False,
                      masked_prediction=False, curator=curator)  # accepted
    batch = super_batch(1)
    resized = {"images": tf.image.resize(batch["images"], (32, 32), antialias=True).numpy(),
               "token_ids": batch["token_ids"]}
    losses = jax.jit(lambda b: ActiveCurator.example_losses(reference, b))
    np.testing.assert_allclose(numpy(losses({"images": batch["images"],
                                             "token_ids": batch["token_ids"]})),
                               numpy(losses(resized)), rtol=1e-4, atol=1e-4)


def naflex_backbone(seed):
    from keras_siglip2.convert.common import build_backbone

    keras.utils.set_random_seed(seed)
    backbone = build_backbone(
        {"type": "naflex", "patch_size": 4, "hidden_dim": helpers.WIDTH, "num_layers": 1,
         "num_heads": 2, "intermediate_dim": 2 * helpers.WIDTH, "max_num_patches": 8},
        {"vocabulary_size": helpers.TEXT_VOCAB, "hidden_dim": helpers.WIDTH,
         "num_layers": 1, "num_heads": 2, "intermediate_dim": 2 * helpers.WIDTH,
         "projection_dim": helpers.WIDTH, "max_sequence_length": helpers.SEQ},
    )
    spread_text_head(backbone, seed)
    return backbone


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="traced with jax.jit")
def test_naflex_learner_curates_its_three_inputs(compilation):
    """A NaFlex learner with a NaFlex reference: inside a jitted function (as in the
    step) the kept sub-batch gathers the three NaFlex inputs with the token ids, and
    the loss terms are those of that sub-batch; a fixed-resolution reference is
    refused."""
    import jax

    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    learner = naflex_backbone(0)
    options = dict(decoder=None, self_distillation=False, masked_prediction=False)
    pretrainer = SigLIP2Pretrainer(learner, curator=ActiveCurator(naflex_backbone(1), KEEP),
                                   **options)
    rng = np.random.RandomState(0)
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(3), indexing="ij"), -1).reshape(6, 2)
    positions = np.concatenate([grid, np.zeros((2, 2), int)])[None].repeat(SUPER_BATCH, 0)
    mask = np.ones((SUPER_BATCH, 8), "int32")
    mask[:, 6:] = 0  # a 2 x 3 grid and two padding entries per image
    batch = {
        "token_ids": rng.randint(0, helpers.TEXT_VOCAB, (SUPER_BATCH, helpers.SEQ)).astype("int32"),
        "pixel_patches": rng.uniform(-1, 1, (SUPER_BATCH, 8, 48)).astype("float32"),
        "patch_positions": positions.astype("int32"),
        "patch_mask": mask,
    }

    @jax.jit
    def step(batch):
        kept_batch, info = pretrainer.curate(batch)
        return (kept_batch, info, pretrainer(batch, training=True),
                pretrainer.loss_terms(kept_batch),
                pretrainer.curator.learnability(learner, batch))

    kept_batch, info, trained, on_kept, scores = jax.tree_util.tree_map(numpy, step(batch))
    kept = np.argsort(-scores)[: SUPER_BATCH // 2]
    for key, value in batch.items():
        np.testing.assert_array_equal(kept_batch[key], value[kept], err_msg=key)
    assert float(trained["sigmoid_loss"]) == pytest.approx(float(on_kept["sigmoid_loss"]),
                                                           rel=1e-5)
    assert float(info["acid_learnability"]) == pytest.approx(scores[kept].mean(), rel=1e-5)
    with pytest.raises(ValueError, match="both must be fixed-resolution or both NaFlex"):
        SigLIP2Pretrainer(learner, curator=ActiveCurator(helpers.tiny_backbone(seed=2)),
                          **options)


def test_corrupt_captions_swaps_a_fraction():
    from keras_siglip2.training.acid_comparison import corrupt_captions

    examples = {"captions": np.array([f"caption {i}" for i in range(10)], dtype=object),
                "labels": np.arange(10)}
    noisy_examples, noisy = corrupt_captions(examples, 0.4, seed=0)
    assert noisy.sum() == 4
    captions = noisy_examples["captions"]
    np.testing.assert_array_equal(captions[~noisy], examples["captions"][~noisy])
    assert all(captions[i] != examples["captions"][i] for i in np.where(noisy)[0])
    assert sorted(captions[noisy]) == sorted(examples["captions"][noisy])  # swapped
    assert examples["captions"][0] == "caption 0"  # the input is not modified
    with pytest.raises(ValueError, match="noise_fraction"):
        corrupt_captions(examples, 1.5, seed=0)


@pytest.mark.large
@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the asserted margin was measured with JAX's random streams (other backends "
           "draw other initial weights from the same seed)")
def test_acid_beats_uniform_sampling_in_the_demo_setting(tmp_path):
    """The issue's claim in the demo setting (`acid_comparison.run_acid_comparison`:
    the demo's tiny towers on the synthetic shapes, reference trained 600 steps on
    clean data, learners 200 steps, batch 32, ACID super-batch 64, keep 0.5) with half
    of the training captions swapped between examples (noisy pairs, ACID's premise):
    ACID's learner ends with a clearly lower held-out sigmoid loss than the uniform one.

    Measured with the default joint selection (held-out loss uniform -> ACID), seed 0:
    noise 0.5: 4.038 -> 2.820; clean data: 2.647 -> 2.457. Earlier, with top-k
    selection: noise 0.5, seeds 0 / 1 / 2: 4.038 ->
    2.759, 3.805 -> 3.160, 3.798 -> 3.070; noise 0.2, seed 1: 3.243 -> 2.968. On clean
    data the gain is not robust at 200 steps (seed 0: 2.647 -> 2.611, seeds 1 / 2:
    2.669 -> 2.923, 2.661 -> 2.985, i.e. worse), small at 400 steps (seeds 0 / 1 / 2:
    2.161 -> 2.158, 2.301 -> 2.174, 2.187 -> 2.169); keep 0.75, 200 steps, seed 1:
    2.669 -> 2.635. This test asserts the noisy case, seed 0, with a margin of 0.25
    (gain measured there: 1.22 joint, 1.28 top-k)."""
    from keras_siglip2.training.acid_comparison import run_acid_comparison

    out = tmp_path / "acid.json"
    summary = run_acid_comparison(seed=0, noise_fraction=0.5, out=str(out))
    losses = summary["heldout_loss"]
    assert summary["steps"] == 200 and summary["super_batch_size"] == 64
    assert summary["noisy_training_pairs"] == 1000
    assert losses["reference"] < losses["acid"] < losses["init"]
    assert losses["uniform"] < losses["init"]
    assert losses["acid"] + 0.25 < losses["uniform"], losses
    assert json.loads(out.read_text())["heldout_loss"] == losses


def test_joint_selection_in_the_pretrainer(compilation):
    """The default selection ("joint") inside the compiled train step: it draws from the
    pretrainer's seed generator (whose state the step advances, so the draws are not
    compiled-in constants), keeps half, and the curator's config (selection, blocks)
    survives a round trip."""
    acid, _ = acid_and_plain_pretrainers(selection="joint")
    batch = super_batch(1)
    state = numpy(acid.seed_generator.state).copy()
    logs = acid.train_on_batch(batch, return_dict=True)
    assert logs["acid_kept_fraction"] == 0.5 and np.isfinite(logs["loss"])
    assert not np.array_equal(numpy(acid.seed_generator.state), state)
    config = acid.curator.get_config()
    assert (config["selection"], config["num_chunks"]) == ("joint", 16)
    again = ActiveCurator.from_config(config)
    assert (again.selection, again.num_chunks, again.keep_ratio) == ("joint", 16, KEEP)
