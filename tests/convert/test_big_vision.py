"""from_big_vision against the official big_vision numbers (tests/fixtures)."""


import numpy as np
import pytest

from keras_siglip2.convert import CheckpointError, from_big_vision
from keras_siglip2.convert.big_vision import infer_architecture, load_big_vision_params
from keras_siglip2.layers import l2_normalize
from tests.conftest import fixture_path, run_in_backend

TOL = 1e-5


def _outputs(backbone, images, token_ids):
    return {
        "zimg": np.asarray(l2_normalize(backbone.get_vision_embeddings(images))),
        "ztxt": np.asarray(l2_normalize(backbone.get_text_embeddings(token_ids))),
        "logits": np.asarray(backbone({"images": images, "token_ids": token_ids})["vision_logits"]),
        "img_tokens": np.asarray(backbone.vision_encoder.get_tokens(images)),
        "txt_tokens": np.asarray(backbone.text_encoder.get_tokens(token_ids)),
    }


@pytest.mark.parametrize("case", ["fixed_b", "gopt_like"])
def test_fixture_outputs_jax(case, load_fixture):
    ref = load_fixture(case)
    backbone = from_big_vision(fixture_path(case))
    out = _outputs(backbone, ref["in/images"], ref["in/token_ids"])
    for key in ("zimg", "ztxt", "logits", "img_tokens", "txt_tokens"):
        np.testing.assert_allclose(out[key], ref[f"out/{key}"], atol=TOL, rtol=0, err_msg=key)
    t = np.exp(np.asarray(backbone.logit_head.log_temperature))
    np.testing.assert_allclose(t, ref["out/t"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(backbone.logit_head.bias), ref["out/b"], rtol=1e-6)


@pytest.mark.parametrize("case", ["fixed_b", "gopt_like"])
def test_fixture_outputs_tensorflow(case):
    code = f"""
import json, numpy as np
from keras_siglip2.convert import from_big_vision
from keras_siglip2.layers import l2_normalize
from tests.conftest import fixture_path
ref = dict(np.load(fixture_path({case!r})))
b = from_big_vision(fixture_path({case!r}))
zimg = np.asarray(l2_normalize(b.get_vision_embeddings(ref["in/images"])))
ztxt = np.asarray(l2_normalize(b.get_text_embeddings(ref["in/token_ids"])))
logits = np.asarray(b({{"images": ref["in/images"], "token_ids": ref["in/token_ids"]}})["vision_logits"])
tokens = np.asarray(b.vision_encoder.get_tokens(ref["in/images"]))
err = lambda a, k: float(np.abs(a - ref["out/" + k]).max())
import keras
print(json.dumps({{"backend": keras.backend.backend(), "zimg": err(zimg, "zimg"), "ztxt": err(ztxt, "ztxt"),
                  "logits": err(logits, "logits"), "img_tokens": err(tokens, "img_tokens")}}))
"""
    result = run_in_backend("tensorflow", code)
    assert result.pop("backend") == "tensorflow"
    for key, err in result.items():
        assert err <= TOL, f"{key} differs by {err} on TensorFlow"


def test_architecture_inferred(load_fixture):
    arch = infer_architecture(load_big_vision_params(fixture_path("gopt_like")))
    assert arch["vision"] == {
        "hidden_dim": 48, "num_layers": 2, "num_heads": 4, "intermediate_dim": 96,
        "type": "fixed", "patch_size": 8, "image_size": 40,
    }
    assert arch["text"]["hidden_dim"] == 32 and arch["text"]["projection_dim"] == 48
    assert arch["text"]["max_sequence_length"] == 16 and arch["text"]["vocabulary_size"] == 1000


def _loop_layout(flat):
    """The same parameters in big_vision's unscanned layout (encoderblock_i)."""
    out = {}
    for key, value in flat.items():
        if "/encoderblock/" in key:
            head, tail = key.split("/encoderblock/")
            for i in range(value.shape[0]):
                out[f"{head}/encoderblock_{i}/{tail}"] = value[i]
        else:
            out[key] = value
    return out


def test_loop_layout_equals_scan_layout(load_fixture, tmp_path):
    ref = load_fixture("fixed_b")
    flat = load_big_vision_params(fixture_path("fixed_b"))
    loop = _loop_layout(flat)
    assert not any("/encoderblock/" in k for k in loop)
    path = tmp_path / "loop.npz"
    np.savez(path, **{f"params/{k}": v for k, v in loop.items()})
    backbone = from_big_vision(path)
    out = _outputs(backbone, ref["in/images"], ref["in/token_ids"])
    np.testing.assert_allclose(out["logits"], ref["out/logits"], atol=TOL, rtol=0)
    # A nested params tree works too.
    nested = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    out2 = _outputs(from_big_vision(nested), ref["in/images"], ref["in/token_ids"])
    np.testing.assert_allclose(out2["zimg"], ref["out/zimg"], atol=TOL, rtol=0)


def test_other_model_family_is_refused(tmp_path):
    path = tmp_path / "vit.npz"
    np.savez(path, **{"params/cls": np.zeros((1, 1, 8)), "params/head/kernel": np.zeros((8, 10))})
    with pytest.raises(CheckpointError, match="not a SigLIP 2 big_vision checkpoint"):
        from_big_vision(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    data = fixture_path("fixed_b").read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_big_vision(path)


def test_incomplete_checkpoint_is_refused(tmp_path):
    flat = load_big_vision_params(fixture_path("fixed_b"))
    del flat["txt/head/bias"]
    with pytest.raises(CheckpointError, match="txt/head/bias"):
        from_big_vision(flat)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        from_big_vision("/nonexistent/siglip2_b16_224.npz")


def test_wrong_shape_is_refused():
    flat = load_big_vision_params(fixture_path("fixed_b"))
    flat["txt/head/bias"] = np.zeros((63,), np.float32)
    with pytest.raises(CheckpointError, match="text_encoder/head/bias"):
        from_big_vision(flat)
