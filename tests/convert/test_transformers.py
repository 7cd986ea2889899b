"""from_transformers against a random tiny Hugging Face SiglipModel saved in the test."""

import json

import numpy as np
import pytest

# The [test] extra installs both: their absence fails the module, it does not skip it.
import torch
import transformers

from keras_siglip2.convert import CheckpointError, from_transformers  # noqa: E402
from keras_siglip2.layers import l2_normalize  # noqa: E402

TOL = 1e-5


def tiny_hf_model(seed=0, vision_width=48, text_width=32):
    """Unequal tower widths (as g-opt): the text head projects to the image width."""
    torch.manual_seed(seed)
    config = transformers.SiglipConfig(
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, image_size=32, patch_size=8,
        ),
        text_config=dict(
            vocab_size=300, hidden_size=text_width, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=12, projection_size=vision_width,
        ),
    )
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # move every weight off its init so all of them matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = tiny_hf_model()
    path = tmp_path_factory.mktemp("hf") / "siglip2-tiny"
    model.save_pretrained(path)
    return path, model


def _inputs():
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    token_ids = rng.randint(0, 300, (4, 12)).astype("int32")
    return images, token_ids


@pytest.mark.parametrize("source", ["directory", "object"])
def test_matches_transformers(hf_dir, source):
    path, model = hf_dir
    backbone = from_transformers(path if source == "directory" else model)
    images, token_ids = _inputs()
    with torch.no_grad():
        ref = model(
            pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
            input_ids=torch.tensor(token_ids).long(),
        )
    zimg = np.asarray(l2_normalize(backbone.get_vision_embeddings(images)))
    ztxt = np.asarray(l2_normalize(backbone.get_text_embeddings(token_ids)))
    logits = np.asarray(backbone({"images": images, "token_ids": token_ids})["vision_logits"])
    np.testing.assert_allclose(zimg, ref.image_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(ztxt, ref.text_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(logits, ref.logits_per_image.numpy(), atol=TOL, rtol=0)
    assert backbone.text_encoder.projection_dim == 48 and backbone.text_encoder.hidden_dim == 32


def test_missing_weights_file(hf_dir, tmp_path):
    path, _ = hf_dir
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="No weights file"):
        from_transformers(tmp_path)


def test_corrupt_weights_file(hf_dir, tmp_path):
    path, _ = hf_dir
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_transformers(tmp_path)


def test_other_model_type(hf_dir, tmp_path):
    path, _ = hf_dir
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "clip"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Unsupported transformers model_type 'clip'"):
        from_transformers(tmp_path)
