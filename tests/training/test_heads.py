"""SILC/TIPS projection head (paper sec. 2.3): numpy reference forward, weight-normalized
cosine logits, (B, D) and (B, N, D) inputs, config round trip, mixed precision."""

import jax
import keras
import numpy as np
import pytest

from keras_siglip2.training.heads import SigLIP2ProjectionHead


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _reference(head, x):
    x = x.astype("float64")
    for i, layer in enumerate(head.mlp_layers):
        x = x @ np.asarray(layer.kernel, "float64") + np.asarray(layer.bias, "float64")
        if i < len(head.mlp_layers) - 1:
            x = _gelu(x)
    x = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)
    v = np.asarray(head.last_kernel, "float64")
    return x @ (v / np.linalg.norm(v, axis=0, keepdims=True))


def _head(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(input_dim=12, hidden_dim=16, bottleneck_dim=8, output_dim=20)
    config.update(kwargs)
    return SigLIP2ProjectionHead(**config)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_matches_numpy_reference_on_pooled_and_patch_features(num_layers):
    head = _head(num_layers=num_layers)
    assert len(head.mlp_layers) == num_layers and head.weights  # built at construction
    rng = np.random.RandomState(0)
    for shape in ((4, 12), (2, 5, 12)):
        x = rng.normal(size=shape).astype("float32")
        out = np.asarray(head(x))
        assert out.shape == shape[:-1] + (20,) and out.dtype == np.float32
        np.testing.assert_allclose(out, _reference(head, x), rtol=1e-4, atol=1e-5)
        assert np.abs(out).max() <= 1.0 + 1e-6  # cosines


def test_last_layer_is_weight_normalized():
    head = _head()
    x = np.random.RandomState(1).normal(size=(3, 12)).astype("float32")
    before = np.asarray(head(x))
    scale = np.random.RandomState(2).uniform(0.1, 10.0, (1, 20)).astype("float32")
    head.last_kernel.assign(np.asarray(head.last_kernel) * scale)
    np.testing.assert_allclose(np.asarray(head(x)), before, rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_jit():
    head = _head(num_layers=2)
    clone = SigLIP2ProjectionHead.from_config(head.get_config())
    clone.set_weights(head.get_weights())
    assert clone.get_config() == head.get_config()
    x = np.random.RandomState(3).normal(size=(2, 3, 12)).astype("float32")
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(head(x)))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(restored, SigLIP2ProjectionHead)
    values = [v.value for v in head.trainable_variables]
    stateless = jax.jit(lambda vs, x: head.stateless_call(vs, [], x)[0])
    np.testing.assert_allclose(np.asarray(stateless(values, x)), np.asarray(head(x)), rtol=1e-6, atol=1e-6)


def test_mixed_precision_gives_float32_logits_close_to_float32():
    head = _head()
    mixed = _head(dtype="mixed_bfloat16")
    mixed.set_weights(head.get_weights())
    assert mixed.mlp_layers[0].compute_dtype == "bfloat16"
    x = np.random.RandomState(4).normal(size=(4, 12)).astype("float32")
    out = np.asarray(mixed(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(head(x)), atol=0.03)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="output_dim"):
        _head(output_dim=0)
    with pytest.raises(ValueError, match="num_layers"):
        _head(num_layers=0)
    with pytest.raises(ValueError, match="input_dim=12"):
        _head()(np.zeros((2, 7), "float32"))
