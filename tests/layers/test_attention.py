"""Attention implementations (layers/attention.py): the exact XLA path, the default
path and the kernel-form inputs (`fold_key_mask`, full masks) that the fused kernels get,
all against a float64 NumPy attention written here; the towers and the LocCa decoder
with the kernel form forced, against big_vision's fixtures and the XLA path."""

import numpy as np
import pytest
from keras import ops

from keras_siglip2.layers import attention
from keras_siglip2.layers.attention import (
    SigLIP2Attention,
    attend,
    check_attention_implementation,
    fold_key_mask,
    kernel_attention,
)

RNG = np.random.default_rng(0)


def reference(q, k, v, key_mask=None, attention_mask=None):
    """float64 softmax(q k^T / sqrt(H) masked) v, per head."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    allowed = np.ones(logits.shape, bool)
    if key_mask is not None:
        allowed &= np.asarray(key_mask, bool)[:, None, None, :]
    if attention_mask is not None:
        m = np.asarray(attention_mask, bool)
        allowed &= m[:, None] if m.ndim == 3 else m[None, None]
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


def inputs(batch=3, t=5, s=7, heads=2, head_dim=12, dtype="float32"):
    q, k, v = (RNG.normal(size=(batch, n, heads, head_dim)).astype(dtype) for n in (t, s, s))
    key_mask = np.ones((batch, s), bool)
    key_mask[0, 4:] = False
    key_mask[2, 1] = False  # padding in the middle too
    key_mask[2, 3] = False
    return q, k, v, key_mask


def causal_and_parallel(batch, t, s):
    mask = np.tril(np.ones((t, s), bool))[None].repeat(batch, 0)
    mask[1] = True  # a "parallel" row: bidirectional
    return mask


CASES = {
    "key_mask": lambda b, t, s, km: (km, None),
    "attention_mask": lambda b, t, s, km: (None, causal_and_parallel(b, t, s)),
    "both": lambda b, t, s, km: (km, causal_and_parallel(b, t, s)),
    "none": lambda b, t, s, km: (None, None),
}


# The causal + parallel masks are square (T == S == 7); key masks run at every T.
MASK_CASES = [(case, t) for case in sorted(CASES) for t in (1, 5, 7)
              if case in ("key_mask", "none") or t == 7]


@pytest.mark.parametrize("case,t", MASK_CASES)
@pytest.mark.parametrize("head_dim", [8, 12])
def test_xla_and_kernel_form_equal_float64_reference(case, t, head_dim):
    """float32: the XLA path, the default path and the kernel-form inputs (run on the
    XLA path here, as CPUs have no kernel) all equal the float64 reference to 2e-6.
    head_dim 8 exercises a full extra group of 8 features, 12 a partial one."""
    q, k, v, key_mask = inputs(t=t, head_dim=head_dim)
    key_mask, attention_mask = CASES[case](3, t, 7, key_mask)
    expected = reference(q, k, v, key_mask, attention_mask)
    for name, out in (
        ("xla", attend(q, k, v, key_mask, attention_mask, "xla")),
        ("auto", attend(q, k, v, key_mask, attention_mask, "auto")),
        ("kernel form", kernel_attention(q, k, v, key_mask, attention_mask, False)),
    ):
        np.testing.assert_allclose(np.asarray(out), expected, atol=2e-6, rtol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_kernel_form_half_precision(dtype):
    """bfloat16 / float16 inputs: the kernel form equals the XLA path and the float64
    reference of the same (rounded) inputs within the half-precision tolerance
    (bfloat16 keeps 8 mantissa bits: 2^-8 relative; outputs are O(1) here)."""
    q, k, v, key_mask = inputs()
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    expected = reference(*(np.asarray(ops.cast(x, "float32")) for x in (q, k, v)), key_mask)
    folded = np.asarray(ops.cast(kernel_attention(q, k, v, key_mask, None, False), "float32"))
    xla = np.asarray(ops.cast(attend(q, k, v, key_mask, None, "xla"), "float32"))
    tol = 3e-2 if dtype == "bfloat16" else 4e-3
    np.testing.assert_allclose(folded, expected, atol=tol, rtol=0)
    np.testing.assert_allclose(folded, xla, atol=tol, rtol=0)


def test_padding_keys_get_exactly_zero_weight():
    """Huge values in padding keys / values change nothing: their weight is exactly 0."""
    q, k, v, key_mask = inputs()
    k2, v2 = k.copy(), v.copy()
    k2[~key_mask], v2[~key_mask] = 1e3, 1e6
    a = np.asarray(kernel_attention(q, k, v, key_mask, None, False))
    b = np.asarray(kernel_attention(q, k2, v2, key_mask, None, False))
    np.testing.assert_array_equal(a, b)


def test_fold_key_mask_shapes_and_values():
    q, k, v, key_mask = inputs(head_dim=12)
    fq, fk, fv = (np.asarray(x) for x in fold_key_mask(q, k, v, key_mask))
    assert fq.shape[-1] == fk.shape[-1] == fv.shape[-1] == 16
    np.testing.assert_array_equal(fq[..., 12], 1.0)
    np.testing.assert_array_equal(fk[..., 12][key_mask], 0.0)
    np.testing.assert_array_equal(fk[..., 12][~key_mask], attention.PADDING_KEY_FEATURE)
    np.testing.assert_array_equal(fq[..., 13:], 0.0)
    np.testing.assert_array_equal(fv[..., 12:], 0.0)
    np.testing.assert_array_equal(fk[..., :12], k)


def test_bad_implementation_is_refused():
    with pytest.raises(ValueError, match=r"`attention_implementation` must be one of .*'cudnn'"):
        check_attention_implementation("cudnn")
    with pytest.raises(ValueError, match="attention_implementation"):
        SigLIP2Attention(16, 2, attention_implementation="fast")


def test_layer_config_round_trip():
    layer = SigLIP2Attention(16, 2, cross_attention=True, attention_implementation="xla")
    config = layer.get_config()
    assert config["attention_implementation"] == "xla"
    assert SigLIP2Attention.from_config(config).attention_implementation == "xla"


# ------------------------------------------------------------ whole towers / decoder
@pytest.fixture
def kernel_form_forced(monkeypatch):
    """"auto" takes the kernel branch (as on a GPU), with the kernel-form inputs run on
    the XLA path (`flash_attention=False`): what the kernel computes, checkable on CPU."""
    monkeypatch.setattr(attention, "_jax_kernel_accepts", lambda *a: True)
    original = attention.kernel_attention

    def on_xla(q, k, v, key_mask=None, attention_mask=None, flash_attention=True):
        return original(q, k, v, key_mask, attention_mask, flash_attention=False)

    monkeypatch.setattr(attention, "kernel_attention", on_xla)


def test_naflex_fixture_with_kernel_form(kernel_form_forced):
    """big_vision's NaFlex fixture (padded sequences) through the kernel form: the
    pooled image embedding and the real tokens within the fixture tolerance 1e-5."""
    from keras_siglip2.convert import from_big_vision  # test-only: the converter
    from keras_siglip2.layers import l2_normalize
    from tests.conftest import fixture_path

    with np.load(fixture_path("naflex_b")) as npz:
        fixture = {key: npz[key] for key in npz.files}
    backbone = from_big_vision(fixture_path("naflex_b"))
    x = {
        "pixel_patches": fixture["in/patches"],
        "patch_positions": np.stack([fixture["in/yidx"], fixture["in/xidx"]], -1),
        "patch_mask": fixture["in/ptype"],
    }
    assert (fixture["in/ptype"] == 0).any()  # the fixture has padding
    zimg = np.asarray(l2_normalize(backbone.vision_encoder(x)))
    np.testing.assert_allclose(zimg, fixture["out/zimg"], atol=1e-5, rtol=0)
    real = fixture["in/ptype"].astype(bool)
    tokens = np.asarray(backbone.vision_encoder.get_tokens(x))
    np.testing.assert_allclose(tokens[real], fixture["out/img_tokens"][real], atol=1e-5, rtol=0)


def _models(implementation, dtype):
    import keras

    from keras_siglip2 import SigLIP2TextEncoder, SigLIP2VisionEncoder
    from keras_siglip2.models.locca_decoder import SigLIP2LocCaDecoder

    sizes = dict(hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=48, dtype=dtype,
                 attention_implementation=implementation)
    keras.utils.set_random_seed(1)
    return (
        SigLIP2VisionEncoder(4, image_size=12, **sizes),
        SigLIP2TextEncoder(50, max_sequence_length=6, **sizes),
        SigLIP2LocCaDecoder(50, max_sequence_length=6, **sizes),
    )


def _run(models):
    vision, text, decoder = models
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (2, 12, 12, 3)).astype("float32")
    ids = rng.integers(0, 50, (2, 6)).astype("int32")
    image_tokens = rng.normal(size=(2, 9, 32)).astype("float32")
    image_mask = np.array([[1] * 9, [1] * 5 + [0] * 4], "int32")
    logits = decoder(ids, image_tokens, parallel=np.array([False, True]),
                     image_key_mask=image_mask)
    return [np.asarray(ops.cast(y, "float32")) for y in (vision(images), text(ids), logits)]


@pytest.mark.parametrize(
    "dtype, tol", [("float32", 1e-5), pytest.param("bfloat16", 3e-2, marks=pytest.mark.large)]
)
def test_towers_and_decoder_forced_xla_equal_kernel_form(dtype, tol, kernel_form_forced):
    """The fixed-resolution tower, the text tower and the LocCa decoder (causal and
    parallel rows, padded image tokens) built with attention_implementation="xla"
    equal the same weights on the default path taking the kernel branch (the kernel
    form), in float32 (1e-5) and bfloat16 (3e-2 relative to the output scale); the
    choice survives get_config."""
    xla_models = _models("xla", dtype)
    assert all(m.get_config()["attention_implementation"] == "xla" for m in xla_models)
    expected = _run(xla_models)
    got = _run(_models("auto", dtype))
    for name, a, b in zip(("vision", "text", "locca"), got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=0, err_msg=f"{dtype} {name}")
