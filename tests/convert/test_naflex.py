"""NaFlex checkpoints through the converters: big_vision's `naflex_vit` (fixture
naflex_b.npz, whole backbone), a random tiny Hugging Face `Siglip2Model` (directory and
live object, a batch mixing aspect ratios, an 80 x 12 grid), the released configs'
omitted defaults, and the preset path (`fetch_preset`) for both NaFlex sources."""

import json

import keras
import numpy as np
import pytest

from keras_siglip2 import presets
from keras_siglip2.convert import CheckpointError, from_big_vision, from_transformers
from keras_siglip2.convert.transformers import HF_CONFIG_DEFAULTS, infer_architecture
from keras_siglip2.layers import l2_normalize
from keras_siglip2.models import SigLIP2Backbone, SigLIP2NaFlexVisionEncoder
from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter
from tests.conftest import fixture_path

TOL = 1e-5  # float32 against the reference implementations
_COMPILED = {}  # id(backbone) -> (backbone, its jitted forward)


def embeddings(backbone, inputs):
    """(zimg, ztxt, logits, image tokens) as numpy, through the public API; compiled
    once per backbone under JAX (eager JAX compiles every op for every new shape)."""

    def run(x):
        return (
            l2_normalize(backbone.get_vision_embeddings(x)),
            l2_normalize(backbone.get_text_embeddings(x["token_ids"])),
            backbone(x)["vision_logits"],
            backbone.vision_encoder.get_tokens(x),
        )

    if keras.backend.backend() == "jax":
        import jax

        owner, compiled = _COMPILED.get(id(backbone), (None, None))
        if owner is not backbone:  # (ids of collected objects get reused)
            compiled = jax.jit(run)
            _COMPILED[id(backbone)] = (backbone, compiled)
        run = compiled
    return tuple(np.asarray(out) for out in run(inputs))


# ----------------------------------------------------------------- big_vision
@pytest.fixture(scope="module")
def bv():
    with np.load(fixture_path("naflex_b")) as npz:
        fixture = {k: npz[k] for k in npz.files}
    inputs = {
        "pixel_patches": fixture["in/patches"],
        "patch_positions": np.stack([fixture["in/yidx"], fixture["in/xidx"]], -1),
        "patch_mask": fixture["in/ptype"],
        "token_ids": fixture["in/token_ids"],
    }
    return fixture, inputs, from_big_vision(fixture_path("naflex_b"))


def test_big_vision_naflex_whole_backbone(bv):
    fixture, inputs, backbone = bv
    assert isinstance(backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    encoder = backbone.vision_encoder
    assert (encoder.patch_size, encoder.position_grid_size, encoder.hidden_dim) == (8, 4, 64)
    zimg, ztxt, logits, tokens = embeddings(backbone, inputs)
    real = fixture["in/ptype"].astype(bool)
    np.testing.assert_allclose(zimg, fixture["out/zimg"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ztxt, fixture["out/ztxt"], atol=TOL, rtol=0)
    np.testing.assert_allclose(logits, fixture["out/logits"], atol=TOL, rtol=0)
    np.testing.assert_allclose(tokens[real], fixture["out/img_tokens"][real], atol=TOL, rtol=0)


def test_big_vision_raw_images_through_converter(bv):
    """in/raw_image_* -> SigLIP2NaFlexImageConverter -> the same grids as big_vision's
    preprocessing and the same embeddings within TOL = 1e-5 (measured: 1.5e-7, as from
    the fixture's own patches: the converter's patches here equal big_vision's; see
    also tests/preprocessing/test_naflex_image_converter.py)."""
    fixture, inputs, backbone = bv
    converter = SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=24)
    x = converter([fixture[f"in/raw_image_{k}"] for k in range(5)])
    np.testing.assert_array_equal(np.asarray(x["patch_mask"]), fixture["in/ptype"])
    np.testing.assert_array_equal(
        np.asarray(x["patch_positions"]), np.asarray(inputs["patch_positions"])
    )
    zimg = embeddings(backbone, {**x, "token_ids": inputs["token_ids"]})[0]
    np.testing.assert_allclose(zimg, fixture["out/zimg"], atol=TOL, rtol=0)


def test_big_vision_grid_that_is_not_3d_is_refused(bv):
    fixture, _, _ = bv
    params = {k[len("params/"):]: v for k, v in fixture.items() if k.startswith("params/")}
    params["img/pos_embedding"] = params["img/pos_embedding"].reshape(1, 16, 64)
    with pytest.raises(CheckpointError, match="position grid"):
        from_big_vision(params)


# ----------------------------------------------------------------- transformers
import torch  # the [test] extra installs both: a missing one must fail, not skip
import transformers

PATCH = 4
# Aspect ratios from a 3.5:1 strip to a 1:7.5 column, in one batch of 48 patches.
IMAGE_SHAPES = [(20, 70), (64, 64), (90, 12), (33, 50)]
MAX_PATCHES = 48


def tiny_hf_siglip2(seed=0):
    """Random NaFlex Siglip2Model: patch 4, a 4 x 4 position grid, text width 24
    projected to the image width 32 (as g-opt, the towers differ)."""
    torch.manual_seed(seed)
    config = transformers.Siglip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            patch_size=PATCH, num_patches=16,
        ),
        text_config=dict(
            vocab_size=300, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=12, projection_size=32,
        ),
    )
    model = transformers.Siglip2Model(config).eval()
    with torch.no_grad():  # move every weight off its init so that all of them matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = tiny_hf_siglip2()
    path = tmp_path_factory.mktemp("hf") / "siglip2-naflex-tiny"
    model.save_pretrained(path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in IMAGE_SHAPES]
    inputs = {
        k: np.asarray(v)
        for k, v in SigLIP2NaFlexImageConverter(PATCH, MAX_PATCHES)(images).items()
    }
    inputs["token_ids"] = rng.integers(0, 300, (3, 12)).astype("int32")
    return model, path, inputs


def hf_outputs(model, inputs):
    """Runs HF on the same patches: HF takes no positions, only each image's
    spatial_shapes (h, w), and expects the real patches first in row-major order
    (which is what SigLIP2NaFlexImageConverter emits; asserted here)."""
    positions, mask = inputs["patch_positions"], inputs["patch_mask"]
    shapes = positions.max(1) + 1
    for b, (h, w) in enumerate(shapes):
        r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        np.testing.assert_array_equal(positions[b, : h * w], np.stack([r.ravel(), c.ravel()], -1))
        assert mask[b].sum() == h * w and mask[b, : h * w].all()
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(inputs["token_ids"]).long(),
            pixel_values=torch.tensor(inputs["pixel_patches"]),
            spatial_shapes=torch.tensor(shapes).long(),
            pixel_attention_mask=torch.tensor(mask).long(),
        )


@pytest.fixture(scope="module")
def hf_reference(hf):
    model, _, inputs = hf
    return hf_outputs(model, inputs)


@pytest.fixture(scope="module")
def hf_backbones(hf):
    model, path, _ = hf
    return {"directory": from_transformers(path), "object": from_transformers(model)}


def assert_same_model(a, b):
    """Same configuration (up to the auto-numbered model name) and bit-identical
    variables (same paths, same values)."""
    config_a, config_b = ({**m.get_config(), "name": None} for m in (a, b))
    assert config_a == config_b
    wa, wb = ({v.path: np.asarray(v.value) for v in m.weights} for m in (a, b))
    assert sorted(wa) == sorted(wb)
    for path in wa:
        np.testing.assert_array_equal(wa[path], wb[path], err_msg=path)


def test_transformers_siglip2_mixed_aspect_ratios(hf, hf_reference, hf_backbones):
    _, _, inputs = hf
    grids = inputs["patch_positions"].max(1) + 1
    assert len({h / w for h, w in grids}) == len(IMAGE_SHAPES)  # all aspect ratios differ
    backbone = hf_backbones["object"]
    assert isinstance(backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    assert backbone.vision_encoder.position_grid_size == 4
    assert backbone.text_encoder.hidden_dim == 24 and backbone.text_encoder.projection_dim == 32
    zimg, ztxt, logits, tokens = embeddings(backbone, inputs)
    np.testing.assert_allclose(zimg, hf_reference.image_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(ztxt, hf_reference.text_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(logits, hf_reference.logits_per_image.numpy(), atol=TOL, rtol=0)
    hf_tokens = hf_reference.vision_model_output.last_hidden_state.numpy()
    real = inputs["patch_mask"].astype(bool)
    np.testing.assert_allclose(tokens[real], hf_tokens[real], atol=TOL, rtol=0)


def test_transformers_directory_equals_live_model(hf_backbones):
    """The save_pretrained directory (safetensors) converts to the very same weights as
    the live model the test above checks against HF."""
    a, b = hf_backbones["directory"], hf_backbones["object"]
    assert_same_model(a, b)


def test_transformers_siglip2_80x12_grid(hf, hf_backbones):
    """80 patches on a side (beyond big_vision's 64 cap): finite and equal to HF, whose
    torch `interpolate(antialias=True)` has no cap either."""
    model, _, _ = hf
    h, w = 80, 12
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(1)
    inputs = {
        "pixel_patches": rng.uniform(-1, 1, (1, h * w, PATCH * PATCH * 3)).astype("float32"),
        "patch_positions": np.stack([r.ravel(), c.ravel()], -1)[None].astype("int32"),
        "patch_mask": np.ones((1, h * w), "int32"),
        "token_ids": rng.integers(0, 300, (2, 12)).astype("int32"),
    }
    ref = hf_outputs(model, inputs)
    zimg, _, logits, _ = embeddings(hf_backbones["object"], inputs)
    assert np.isfinite(zimg).all()
    np.testing.assert_allclose(zimg, ref.image_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(logits, ref.logits_per_image.numpy(), atol=TOL, rtol=0)


def test_released_config_omits_defaults():
    """The hub's config.json files list only what differs from transformers' defaults
    (e.g. google/siglip2-base-patch16-naflex): the defaults are filled in."""
    minimal = {
        "model_type": "siglip2",
        "text_config": {"model_type": "siglip2_text_model", "vocab_size": 256000},
        "vision_config": {"model_type": "siglip2_vision_model"},
    }
    arch = infer_architecture(minimal, state={})
    expected = presets.get_preset("siglip2_base_patch16_naflex")["architecture"]
    vision = {k: v for k, v in expected["vision"].items() if k != "max_num_patches"}
    assert {k: v for k, v in arch["vision"].items() if k != "layer_norm_epsilon"} == vision
    assert {k: v for k, v in arch["text"].items() if k != "layer_norm_epsilon"} == expected["text"]


@pytest.mark.parametrize("model_type", sorted(HF_CONFIG_DEFAULTS))
def test_config_defaults_are_transformers_defaults(model_type):
    prefix = "Siglip2" if model_type == "siglip2" else "Siglip"
    for key, cls in (("vision_config", "VisionConfig"), ("text_config", "TextConfig")):
        config = getattr(transformers, prefix + cls)()
        for name, value in HF_CONFIG_DEFAULTS[model_type][key].items():
            assert getattr(config, name) == value, (model_type, key, name)


def test_non_square_position_table_is_refused(hf, tmp_path):
    _, path, _ = hf
    config = json.loads((path / "config.json").read_text())
    config["vision_config"]["num_patches"] = 12
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="num_patches=12 is not a square"):
        from_transformers(tmp_path)


# ----------------------------------------------------------------- presets
NAFLEX_PRESETS = {  # name -> (HF repo, big_vision file)
    "siglip2_base_patch16_naflex": (
        "hf://google/siglip2-base-patch16-naflex",
        "gs://big_vision/siglip2/siglip2_b16_naflex.npz",
    ),
    "siglip2_so400m_patch16_naflex": (
        "hf://google/siglip2-so400m-patch16-naflex",
        "gs://big_vision/siglip2/siglip2_so400m16_naflex.npz",
    ),
}


@pytest.mark.parametrize("name", sorted(NAFLEX_PRESETS))
def test_naflex_presets_convert_from_transformers(name, hf, hf_backbones, tmp_path, monkeypatch):
    """`from_preset(name)`: download (faked: the tiny HF directory stands in for the
    preset's hf:// repo), from_transformers, save, load: the loaded backbone is the one
    that reproduces HF above, bit for bit."""
    _, path, _ = hf
    handles = []
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(presets, "download_source", lambda h: handles.append(h) or str(path))
    backbone = SigLIP2Backbone.from_preset(name)
    assert handles == [NAFLEX_PRESETS[name][0]]
    assert isinstance(backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    assert_same_model(backbone, hf_backbones["object"])


@pytest.mark.parametrize("name", sorted(NAFLEX_PRESETS))
def test_naflex_presets_convert_from_big_vision(name, bv, tmp_path, monkeypatch):
    """The same through the big_vision .npz source: the loaded backbone is bit for bit
    the one checked against the fixture above."""
    _, _, converted = bv
    handles = []
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(
        presets, "download_source", lambda h: handles.append(h) or str(fixture_path("naflex_b"))
    )
    directory = presets.resolve_preset(name, source="big_vision")
    assert handles == [NAFLEX_PRESETS[name][1]]
    backbone = SigLIP2Backbone.from_preset(directory)
    assert_same_model(backbone, converted)
