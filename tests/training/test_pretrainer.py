"""SigLIP2Pretrainer (paper sec. 2.1-2.3): the loss terms and their weights, the JAX and
TensorFlow train steps agreeing, the EMA teacher, saved stage state, and bad input.

Every jitted step here uses one configuration (`pretrainer_helpers.tiny_pretrainer` with
teacher momentum 0.9, `tiny_batch(fixed_random=True)`, `compile(total_steps=10)`), so with
JAX's compilation cache (see `fast_compilation`) each of its two train steps (before /
after the 80 % switch) is compiled once per session."""

import json

import keras
import numpy as np
import pytest

from keras_siglip2.training.callbacks import NonFiniteLossError
from keras_siglip2.training.pretrainer import (
    SigLIP2Pretrainer,
    default_loss_weights,
    resolve_loss_weights,
    size_factor,
)
from tests.conftest import run_in_backend
from tests.training.pretrainer_helpers import (
    BATCH,
    tiny_backbone,
    tiny_batch,
    tiny_pretrainer,
    variables_by_path,
)

MOMENTUM = 0.9
TERMS = ("sigmoid", "locca", "silc", "tips")


def make(seed=0, **kwargs):
    kwargs.setdefault("teacher_momentum", MOMENTUM)
    return tiny_pretrainer(seed=seed, **kwargs)


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_default_loss_weights_follow_model_size():
    assert [size_factor(w) for w in (768, 1024, 1152, 1536)] == [0.25, 0.5, 1.0, 0.5]
    assert size_factor(64) == 1.0  # tiny / custom widths: unscaled paper weights
    base = default_loss_weights(768)
    assert base == {"sigmoid": 1.0, "locca": 1.0, "silc": 0.25, "tips": 0.0625}
    assert default_loss_weights(1152)["tips"] == 0.25
    override = resolve_loss_weights({"self_distillation": 2.0, "tips": 0.5}, 768)
    assert override == {"sigmoid": 1.0, "locca": 1.0, "silc": 2.0, "tips": 0.5}
    with pytest.raises(ValueError, match="Unknown loss weight 'contrastive'"):
        resolve_loss_weights({"contrastive": 1.0}, 768)
    with pytest.raises(ValueError, match="finite number >= 0"):
        resolve_loss_weights({"locca": -1.0}, 768)


def test_loss_terms_weights_and_total():
    """The logged terms of a step (computed before its update) and the total."""
    p = make()
    p.compile(total_steps=10)
    batch = tiny_batch(fixed_random=True)
    logits = numpy(p.backbone.predict_on_batch(
        {"images": batch["images"], "token_ids": batch["token_ids"]})["vision_logits"])
    out = p.train_on_batch(batch, return_dict=True)
    assert set(out) == {"loss"} | {f"{t}_{s}" for t in TERMS for s in ("loss", "weight")}
    # Before the 80 % switch SILC / TIPS are off (weight 0, not computed).
    assert out["silc_weight"] == out["tips_weight"] == 0.0
    assert out["loss"] == pytest.approx(out["sigmoid_loss"] + out["locca_loss"], rel=1e-6)
    # The sigmoid term is the sigmoid loss of the backbone's own logits.
    labels = 2 * np.eye(len(logits)) - 1
    expected = np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=1))
    assert out["sigmoid_loss"] == pytest.approx(expected, rel=1e-5)
    p.start_self_distillation()
    out = p.train_on_batch(batch, return_dict=True)
    assert (out["silc_weight"], out["tips_weight"]) == (1.0, 0.25)
    for term in TERMS:
        assert np.isfinite(out[f"{term}_loss"]) and out[f"{term}_loss"] > 0
    total = sum(out[f"{t}_weight"] * out[f"{t}_loss"] for t in TERMS)
    assert out["loss"] == pytest.approx(total, rel=1e-6)


def test_teacher_starts_as_student_and_switch_reinitializes_heads():
    p, q = make(seed=0), make(seed=0)
    student = p.backbone.vision_encoder
    # Train-like change of the student, then the switch copies it into the teacher.
    for v in student.weights:
        v.assign(numpy(v) + 0.01)
    heads_before = [numpy(v) for v in p.silc_head.weights]
    p.start_self_distillation()
    q.start_self_distillation()
    for t, s in zip(p.teacher_vision_encoder.weights, student.weights):
        np.testing.assert_array_equal(numpy(t), numpy(s))
    for t, s in zip(p.teacher_silc_head.weights, p.silc_head.weights):
        np.testing.assert_array_equal(numpy(t), numpy(s))
    assert any(not np.array_equal(a, numpy(b)) for a, b in zip(heads_before, p.silc_head.weights))
    # The re-initialization is seeded: two pretrainers with one seed agree.
    for a, b in zip(p.silc_head.weights + p.tips_head.weights, q.silc_head.weights
                    + q.tips_head.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    np.testing.assert_array_equal(numpy(p.mask_token), numpy(q.mask_token))
    assert p.self_distillation_started and float(numpy(p.silc_center).sum()) == 0.0


OTHER_BACKEND_STEPS = """
import json, sys
import keras
import numpy as np
sys.path.insert(0, {root!r})
from tests.training.pretrainer_helpers import tiny_pretrainer, tiny_batch
p = tiny_pretrainer(teacher_momentum={momentum})
p.load_weights({weights!r})
assert p.self_distillation_started
p.compile(total_steps=10)
batch = tiny_batch(fixed_random=True)
logs = [p.train_on_batch(batch, return_dict=True) for _ in range(2)]
teacher = float(sum(np.abs(keras.ops.convert_to_numpy(v.value)).sum()
                    for v in p.teacher_vision_encoder.weights))
print(json.dumps({{"logs": logs, "teacher": teacher}}))
"""


def check_backends_agree(tmp_path, backends):
    """Same weights and batch (with the step's random choices given): every logged term
    of two steps agrees within 1e-4 between the JAX train step and the other backends',
    and so does the EMA teacher after them."""
    from tests.conftest import ROOT

    p = make()
    p.start_self_distillation()
    weights = str(tmp_path / "start.weights.h5")
    p.save_weights(weights)
    p.compile(total_steps=10)
    batch = tiny_batch(fixed_random=True)
    jax_logs = [p.train_on_batch(batch, return_dict=True) for _ in range(2)]
    teacher = float(sum(np.abs(numpy(v)).sum() for v in p.teacher_vision_encoder.weights))
    assert jax_logs[0]["silc_loss"] > 0 and jax_logs[1]["loss"] != jax_logs[0]["loss"]
    code = OTHER_BACKEND_STEPS.format(root=str(ROOT), momentum=MOMENTUM, weights=weights)
    for backend in backends:
        other = run_in_backend(backend, code)
        for step, (a, b) in enumerate(zip(jax_logs, other["logs"])):
            assert set(a) == set(b)
            for key in a:
                assert abs(a[key] - b[key]) <= 1e-4, (backend, step, key, a[key], b[key])
        assert teacher == pytest.approx(other["teacher"], rel=1e-5), backend


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="compares JAX with a subprocess")
def test_jax_and_tensorflow_train_steps_agree(tmp_path):
    check_backends_agree(tmp_path, ["tensorflow"])


@pytest.mark.large
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="compares JAX with a subprocess")
def test_jax_and_torch_train_steps_agree(tmp_path):
    check_backends_agree(tmp_path, ["torch"])


def test_ema_teacher_equals_closed_form():
    """After n steps: T_n = m^n T_0 + (1 - m) sum_k m^(n-k) S_k, S_k the student after
    step k (tower and heads)."""
    p = make()
    p.start_self_distillation()
    p.compile(total_steps=10)
    pairs = p._teacher_pairs()
    t0 = [numpy(t).astype(np.float64) for t, _ in pairs]
    batch = tiny_batch(fixed_random=True)
    students = []
    n = 3
    for _ in range(n):
        p.train_on_batch(batch)
        students.append([numpy(s).astype(np.float64) for _, s in pairs])
    moved = 0.0
    for i, (teacher, _) in enumerate(pairs):
        expected = MOMENTUM**n * t0[i] + sum(
            (1 - MOMENTUM) * MOMENTUM ** (n - k) * students[k - 1][i] for k in range(1, n + 1)
        )
        np.testing.assert_allclose(numpy(teacher), expected, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(numpy(teacher) - t0[i]).max()))
    assert moved > 1e-4  # the teacher did move
    # Non-trainable: the teacher gets no gradient step of its own.
    assert not any(t.trainable for t, _ in pairs)


def test_stage_teacher_and_seed_are_saved(tmp_path):
    p = make()
    p.start_self_distillation()
    p.compile(total_steps=10)
    p.train_on_batch(tiny_batch(fixed_random=True))
    keras.random.uniform((2,), seed=p.seed_generator)  # advance the seed state
    path = str(tmp_path / "p.weights.h5")
    p.save_weights(path)
    q = make(seed=5)
    assert not q.self_distillation_started and not q._self_distillation_on
    q.load_weights(path)
    assert q.self_distillation_started and q._self_distillation_on
    ours, theirs = variables_by_path(p.weights), variables_by_path(q.weights)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    np.testing.assert_array_equal(numpy(p.seed_generator.state), numpy(q.seed_generator.state))


@pytest.mark.parametrize(
    "drop, field",
    [("local_images", "local_images"), ("decoder_targets", "decoder_targets"),
     ("token_ids", "token_ids")],
)
def test_missing_field_fails_at_first_step(drop, field):
    p = make()
    p.compile(total_steps=10)
    batch = tiny_batch(fixed_random=True)
    del batch[drop]
    # SILC is not active yet, but its field is required from the first step.
    with pytest.raises(ValueError, match=f"no field '{field}'"):
        p.fit(batch, batch_size=4, epochs=1, verbose=0)


def test_malformed_batches():
    p = make()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="'local_images' must be"):
        p({**batch, "local_images": batch["images"]})
    with pytest.raises(ValueError, match="dict batches"):
        p.check_batch(batch["images"])


def test_non_finite_loss_stops_naming_step_and_term():
    """A NaN in the third batch's local crops makes silc_loss NaN at step 2: training
    stops with the step and the term named, and the weights of step 1 are kept."""
    p = make()
    p.start_self_distillation()
    p.compile(total_steps=10)
    good = tiny_batch(fixed_random=True)
    bad = {k: v.copy() for k, v in good.items()}
    bad["local_images"][0, 0, 0, 0, 0] = np.nan
    data = {k: np.concatenate([good[k], good[k], bad[k]]) for k in good}
    snapshot = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                if keras.backend.backend() == "jax":
                    self.model.jax_state_sync()
                snapshot.update(variables_by_path(self.model.variables))

    with pytest.raises(NonFiniteLossError, match=r"step 2: .*'silc_loss'") as info:
        p.fit(data, batch_size=4, epochs=1, shuffle=False, callbacks=[Snapshot()], verbose=0)
    assert "'sigmoid_loss'" not in str(info.value)
    if keras.backend.backend() == "jax":  # the JAX step keeps the last good state
        final = variables_by_path(p.variables)
        for key, value in snapshot.items():
            if "seed" not in key:
                np.testing.assert_array_equal(final[key], value, err_msg=key)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"teacher_momentum": 1.0}, ValueError, "teacher_momentum"),
        ({"mask_ratio": 1.5}, ValueError, "mask_ratio"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"decoder": "transformer"}, ValueError, "decoder"),
        ({"head_dims": (8, 8)}, ValueError, "head_dims"),
        ({"local_image_size": 4}, ValueError, "local_image_size"),
        ({"local_image_size": (8, 8, 8)}, ValueError, "local_image_size"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SigLIP2Pretrainer(tiny_backbone(), **kwargs)


def test_bad_backbone_and_compile_arguments():
    with pytest.raises(TypeError, match="SigLIP2Backbone"):
        SigLIP2Pretrainer("not a backbone")
    p = make(locca=False)
    with pytest.raises(ValueError, match="takes no `loss`"):
        p.compile(loss="mse")
    with pytest.raises(ValueError, match="default optimizer"):
        p.compile(optimizer="adam", learning_rate=1e-3)
    with pytest.raises(NotImplementedError, match="backbone"):
        p.predict(tiny_batch(locca=False))


def test_small_local_crops():
    """`local_image_size`: the student sees SILC's crops at that size (position
    embedding resized); at the tower's own size it is the default path exactly."""
    batch = tiny_batch(fixed_random=True)
    silc = {}
    for size in (None, 16, 8):
        p = make(seed=0, local_image_size=size)
        p.start_self_distillation()
        out = p(batch, training=False)
        silc[size] = float(numpy(out["silc_loss"]))
        assert np.isfinite(float(numpy(out["loss"])))
    assert silc[16] == pytest.approx(silc[None], abs=1e-6)
    assert abs(silc[8] - silc[None]) > 1e-4  # 1 x 1 patch crops: another student input
    q = SigLIP2Pretrainer.from_config(json.loads(json.dumps(p.get_config())))
    assert q.local_image_size == (8, 8)


def test_config_round_trip():
    """from_config(get_config()) through JSON, given the original's weights, computes
    the original's loss terms on the same batch (every term and weight equal: one
    computation on equal inputs), with the configured settings: the total is the terms
    weighted by the configured weights (TIPS 0.5, not the default 0.25; rel 1e-6,
    float32 sums), and the configured temperatures change the SILC / TIPS terms."""
    settings = dict(locca=True, chunk_size=2, loss_weights={"tips": 0.5},
                    student_temperature=0.2, teacher_temperature=0.05)
    p = make(**settings)
    config = json.loads(json.dumps(p.get_config()))
    q = SigLIP2Pretrainer.from_config(config)
    assert q.loss_weights == p.loss_weights and q.chunk_size == 2
    assert q.teacher_momentum == MOMENTUM and q.head_dims == p.head_dims
    assert [tuple(v.shape) for v in q.weights] == [tuple(v.shape) for v in p.weights]
    p.start_self_distillation()
    q.set_weights(p.get_weights())
    q.sync_stage_from_variables()
    batch = tiny_batch(fixed_random=True)
    ours = {k: float(numpy(v)) for k, v in p(batch, training=False).items()}
    theirs = {k: float(numpy(v)) for k, v in q(batch, training=False).items()}
    assert ours == theirs
    weights = {"sigmoid": 1.0, "locca": 1.0, "silc": 1.0, "tips": 0.5}  # paper's, tips set
    assert {t: ours[f"{t}_weight"] for t in TERMS} == weights
    assert ours["loss"] == pytest.approx(sum(w * ours[f"{t}_loss"] for t, w in weights.items()),
                                         rel=1e-6)
    # The temperatures matter: the default ones (0.1, 0.04) give other SILC / TIPS terms.
    default = make(locca=True)
    default.start_self_distillation()
    default.set_weights(p.get_weights())
    plain = {k: float(numpy(v)) for k, v in default(batch, training=False).items()}
    # The plain sigmoid loss vs the chunked one of chunk_size=2 (measured: 1e-7 rel).
    assert plain["sigmoid_loss"] == pytest.approx(ours["sigmoid_loss"], rel=1e-6)
    for term in ("silc", "tips"):
        assert abs(plain[f"{term}_loss"] - ours[f"{term}_loss"]) > 1e-2, term


def test_naflex_backbone_trains_with_sigmoid_and_locca():
    from keras_siglip2.convert.common import build_backbone
    from keras_siglip2.models.locca_decoder import locca_decoder_for
    from tests.training.pretrainer_helpers import NUM_BINS, SEQ, TEXT_VOCAB, WIDTH

    keras.utils.set_random_seed(0)
    backbone = build_backbone(
        {"type": "naflex", "patch_size": 4, "hidden_dim": WIDTH, "num_layers": 1,
         "num_heads": 2, "intermediate_dim": 2 * WIDTH, "max_num_patches": 8},
        {"vocabulary_size": TEXT_VOCAB, "hidden_dim": WIDTH, "num_layers": 1, "num_heads": 2,
         "intermediate_dim": 2 * WIDTH, "projection_dim": WIDTH, "max_sequence_length": SEQ},
    )
    with pytest.raises(ValueError, match="fixed-resolution"):
        SigLIP2Pretrainer(backbone, decoder=None)
    p = SigLIP2Pretrainer(
        backbone, decoder=locca_decoder_for(backbone, num_location_bins=NUM_BINS),
        self_distillation=False, masked_prediction=False,
    )
    assert p.active_terms == ["sigmoid", "locca"]
    rng = np.random.RandomState(0)
    batch = tiny_batch(local=False, fixed_random=True)
    del batch["images"], batch["tips_mask"]
    mask = np.ones((4, 8), "int32")
    mask[:, 6:] = 0  # two padding patches per image
    batch.update(
        pixel_patches=rng.uniform(-1, 1, (4, 8, 48)).astype("float32"),
        patch_positions=np.stack(np.meshgrid(np.arange(2), np.arange(4), indexing="ij"),
                                 -1).reshape(1, 8, 2).repeat(4, 0).astype("int32"),
        patch_mask=mask,
    )
    with pytest.raises(ValueError, match="no field 'patch_mask'"):
        p.check_batch({k: v for k, v in batch.items() if k != "patch_mask"})
    p.compile(total_steps=10)
    logs = [p.train_on_batch(batch, return_dict=True) for _ in range(2)]
    assert set(logs[0]) == {"loss", "sigmoid_loss", "sigmoid_weight", "locca_loss",
                            "locca_weight"}
    assert all(np.isfinite(v) for v in logs[1].values()) and logs[1]["loss"] < logs[0]["loss"]


def test_fit_sets_the_schedule_length():
    from keras_siglip2.training.optimizers import learning_rate_schedule_of
    from keras_siglip2.training.pretrainer import _num_batches

    p = make()
    p.compile()  # no total_steps: fit sets it from epochs x batches per epoch
    batch = tiny_batch(fixed_random=True)
    del batch["local_images"]  # stop at the first step, before any compilation
    with pytest.raises(ValueError, match="local_images"):
        p.fit(batch, batch_size=2, epochs=3, verbose=0)
    assert learning_rate_schedule_of(p.optimizer).total_steps == 3 * 2
    assert _num_batches(batch, 3) == 2 and _num_batches(batch["images"]) == 1
    q = make()
    q.compile()
    with pytest.raises(ValueError, match="number of training steps"):
        q.fit(iter([batch]), epochs=1, verbose=0)


FIT_STEPS = 6


def _fit(policy):
    """FIT_STEPS steps on one fixed batch with all four losses active (SILC / TIPS
    switched on first); (pretrainer, history)."""
    p = make(backbone_dtype=policy)
    p.start_self_distillation()
    reference = make()  # the same float32 weights for every policy
    reference.start_self_distillation()
    p.set_weights(reference.get_weights())
    p.compile(learning_rate=1e-3, total_steps=FIT_STEPS, warmup_steps=0)
    history = p.fit(tiny_batch(fixed_random=True), batch_size=BATCH, epochs=FIT_STEPS,
                    verbose=0).history
    return p, {k: np.array(v) for k, v in history.items()}


@pytest.fixture(scope="module")
def float32_fit(compilation):
    return _fit(None)


# Per-step loss terms and final weights of the mixed-precision fit against the float32
# fit (measured over the 6 steps: mixed_float16 at most 4.8e-3 on the total loss, 4.4e-3
# on a term (SILC), 2.4e-4 on a weight; mixed_bfloat16 3.5e-2, 2.2e-2, 2.0e-3; the float32
# total loss drops by more than 100 x the bound).
FIT_BOUNDS = {"mixed_float16": (2e-2, 1e-3), "mixed_bfloat16": (1e-1, 1e-2)}


@pytest.mark.large  # three 6-step fits: about 60 s of CPU
@pytest.mark.parametrize("policy", sorted(FIT_BOUNDS))
def test_mixed_precision_fit_close_to_float32(policy, float32_fit):
    """`fit` with a mixed_float16 / mixed_bfloat16 backbone: float32 variables, the
    heads and the loss in float32, a LossScaleOptimizer for float16 only (no step
    skipped: the loss scale stays 2^15), and the same training as float32 within
    FIT_BOUNDS: every logged loss term at every step and every final weight."""
    reference, expected = float32_fit
    p, history = _fit(policy)
    compute = policy.split("_")[1]
    assert p.backbone.vision_encoder.compute_dtype == compute
    assert p.decoder.compute_dtype == compute
    assert p.silc_head.compute_dtype == ("float32" if compute == "float16" else compute)
    assert all(v.dtype == "float32" for v in p.trainable_variables)
    scaled = isinstance(p.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (compute == "float16")
    assert int(numpy(p.optimizer.iterations)) == FIT_STEPS
    if scaled:
        assert float(numpy(p.optimizer.dynamic_scale)) == 2.0**15
    loss_bound, weight_bound = FIT_BOUNDS[policy]
    names = ["loss"] + [f"{t}_loss" for t in TERMS]
    assert expected["loss"][0] - expected["loss"][-1] > 100 * loss_bound
    for name in names:
        err = np.abs(history[name] - expected[name]).max()
        print(f"{policy} {name}: max |diff| over {FIT_STEPS} steps {err:.2e}")
        assert 0 < err <= loss_bound, (name, err)
    errs = [np.abs(numpy(a) - numpy(b)).max()
            for a, b in zip(p.trainable_variables, reference.trainable_variables)]
    print(f"{policy}: max |weight diff| {max(errs):.2e}")
    assert 0 < max(errs) <= weight_bound


def test_float16_train_step_scales_the_loss_and_skips_overflowing_steps():
    """The JAX step takes gradients of the scaled loss: with a loss scale that makes
    them overflow (2^60, beyond float16's range for any gradient), the step changes
    nothing but the scale, which halves (the weights, teacher, centers stay); with
    auto_scale_loss=False there is no LossScaleOptimizer."""
    p = make(backbone_dtype="mixed_float16")
    p.start_self_distillation()
    inner = keras.optimizers.AdamW(learning_rate=1e-3)
    p.compile(optimizer=keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**60))
    metrics = {id(v) for v in p.metrics_variables}
    state = [v for v in p.trainable_variables + p.non_trainable_variables
             if id(v) not in metrics]
    before = [numpy(v) for v in state]
    p.train_on_batch(tiny_batch(fixed_random=True))
    assert float(numpy(p.optimizer.dynamic_scale)) == 2.0**59
    assert int(numpy(p.optimizer.iterations)) == 0
    for v, old in zip(state, before):
        np.testing.assert_array_equal(numpy(v), old, err_msg=v.path)
    q = make(backbone_dtype="mixed_float16")
    q.compile(auto_scale_loss=False, total_steps=2)
    assert not isinstance(q.optimizer, keras.optimizers.LossScaleOptimizer)


def test_pretrainer_dtype_must_be_float32():
    with pytest.raises(ValueError, match="its `dtype` must be 'float32'; got 'mixed_bfloat16'"):
        make(dtype="mixed_bfloat16")
