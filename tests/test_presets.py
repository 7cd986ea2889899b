"""Tests of the preset registry (`keras_siglip2.presets`, `presets/*.json`): the 17
released checkpoints, parameter counts recomputed from the architecture and checked
against real models and published counts, the table, and `resolve_preset` (offline: the
download and conversion are replaced by fakes)."""

import json
import os
import re
import sys
import types

import numpy as np
import pytest

from keras_siglip2 import preset_registry, presets
from keras_siglip2.models import SigLIP2Backbone, SigLIP2TextEncoder, SigLIP2VisionEncoder

EXPECTED = [
    "siglip2_base_patch32_256",
    "siglip2_base_patch16_224",
    "siglip2_base_patch16_256",
    "siglip2_base_patch16_384",
    "siglip2_base_patch16_512",
    "siglip2_large_patch16_256",
    "siglip2_large_patch16_384",
    "siglip2_large_patch16_512",
    "siglip2_so400m_patch14_224",
    "siglip2_so400m_patch14_384",
    "siglip2_so400m_patch16_256",
    "siglip2_so400m_patch16_384",
    "siglip2_so400m_patch16_512",
    "siglip2_giant_opt_patch16_256",
    "siglip2_giant_opt_patch16_384",
    "siglip2_base_patch16_naflex",
    "siglip2_so400m_patch16_naflex",
]

# Tower sizes (width, depth, heads, mlp) of the paper.
TOWERS = {
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "so400m": (1152, 27, 16, 4304),
    "giant_opt": (1536, 40, 16, 6144),
}

# Hugging Face transformers' parameter count of google/siglip2-base-patch16-224.
HF_BASE_PATCH16_224_PARAMS = 375_187_970


@pytest.fixture(autouse=True)
def fresh_registry():
    presets.clear_registry_cache()
    yield
    presets.clear_registry_cache()


def family(name):
    return "giant_opt" if name.startswith("siglip2_giant_opt") else name.split("_")[1]


# ---------------------------------------------------------------------------
# The JSON files.
# ---------------------------------------------------------------------------


def test_all_released_presets_listed_in_order():
    listed = presets.list_presets()
    assert list(listed) == EXPECTED
    assert list(presets.RELEASED_PRESETS) == EXPECTED
    repo_files = sorted(f[:-5] for f in os.listdir(presets.REPO_PRESET_DIR) if f.endswith(".json"))
    assert repo_files == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_preset_fields(name):
    meta = presets.get_preset(name)
    assert meta["name"] == name
    assert set(meta) >= {"name", "description", "architecture", "sources", "params", "paper_metrics"}
    assert isinstance(meta["description"], str) and len(meta["description"]) > 20

    vision, text = meta["architecture"]["vision"], meta["architecture"]["text"]
    d, layers, heads, mlp = TOWERS[family(name)]
    assert (vision["hidden_dim"], vision["num_layers"], vision["num_heads"], vision["intermediate_dim"]) == (
        d, layers, heads, mlp
    )
    text_tower = TOWERS["so400m" if family(name) == "giant_opt" else family(name)]
    assert (text["hidden_dim"], text["num_layers"], text["num_heads"], text["intermediate_dim"]) == text_tower
    assert text["vocabulary_size"] == 256_000
    assert text["max_sequence_length"] == 64
    assert text["projection_dim"] == vision["hidden_dim"]

    patch = int(re.search(r"patch(\d+)", name).group(1))
    assert vision["patch_size"] == patch
    if name.endswith("_naflex"):
        assert vision["type"] == "naflex"
        assert vision["max_num_patches"] == 256
        assert vision["position_grid_size"] == 16
        assert "image_size" not in vision
    else:
        assert vision["type"] == "fixed"
        assert vision["image_size"] == int(name.rsplit("_", 1)[1])

    sources = meta["sources"]
    hf_id = "google/" + name.replace("_", "-")
    assert sources["transformers"] == f"hf://{hf_id}"
    assert re.fullmatch(r"gs://big_vision/siglip2/siglip2_[a-z0-9-]+_(\d+|naflex)\.npz", sources["big_vision"])
    assert sources["keras_hub"] is None or sources["keras_hub"].startswith("kaggle://keras/siglip/keras/")

    metrics = meta["paper_metrics"]
    for key in ("imagenet_1k_zero_shot_top1", "coco_image_to_text_r1", "coco_text_to_image_r1"):
        value = metrics[key]
        assert value is None or 0 < value < 100
    assert metrics["source"]


def test_big_vision_file_names():
    bv = {n: presets.get_preset(n)["sources"]["big_vision"].rsplit("/", 1)[1] for n in EXPECTED}
    assert bv["siglip2_base_patch16_224"] == "siglip2_b16_224.npz"
    assert bv["siglip2_base_patch32_256"] == "siglip2_b32_256.npz"
    assert bv["siglip2_large_patch16_512"] == "siglip2_l16_512.npz"
    assert bv["siglip2_so400m_patch14_384"] == "siglip2_so400m14_384.npz"
    assert bv["siglip2_giant_opt_patch16_256"] == "siglip2_g-opt16_256.npz"
    assert bv["siglip2_base_patch16_naflex"] == "siglip2_b16_naflex.npz"
    assert bv["siglip2_so400m_patch16_naflex"] == "siglip2_so400m16_naflex.npz"


def test_keras_hub_handles_match_keras_hub():
    from keras_hub.src.models.siglip.siglip_presets import backbone_presets

    for name in EXPECTED:
        handle = presets.get_preset(name)["sources"]["keras_hub"]
        if name in backbone_presets:
            assert handle == backbone_presets[name]["kaggle_handle"], name
        else:
            assert handle is None, name


def test_paper_metrics_spot_values():
    def m(name):
        return presets.get_preset(name)["paper_metrics"]

    assert m("siglip2_base_patch16_224")["imagenet_1k_zero_shot_top1"] == 78.2
    assert m("siglip2_base_patch16_224")["coco_text_to_image_r1"] == 52.1
    assert m("siglip2_base_patch16_224")["coco_image_to_text_r1"] == 68.9
    assert m("siglip2_giant_opt_patch16_384")["imagenet_1k_zero_shot_top1"] == 85.0
    assert m("siglip2_so400m_patch16_naflex")["imagenet_1k_zero_shot_top1"] == 83.5


# ---------------------------------------------------------------------------
# Parameter counts.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED)
def test_param_counts_recomputed(name):
    meta = presets.get_preset(name)
    assert presets.count_params(meta["architecture"]) == meta["params"]
    # Within 1 % of what keras-hub publishes for the same checkpoint.
    published = (meta.get("published_params") or {}).get("keras_hub")
    if published:
        assert abs(meta["params"]["total"] - published) / published < 0.01


def test_known_real_totals():
    counts = presets.count_params(presets.get_preset("siglip2_base_patch16_224")["architecture"])
    assert counts["total"] == HF_BASE_PATCH16_224_PARAMS
    assert abs(counts["vision"] - 92.9e6) / 92.9e6 < 0.001
    assert abs(counts["text"] - 282.3e6) / 282.3e6 < 0.001
    assert (
        presets.get_preset("siglip2_base_patch16_224")["published_params"]["transformers"]
        == HF_BASE_PATCH16_224_PARAMS
    )
    # The so400m/16-512 count equals keras-hub's published one exactly.
    so = presets.count_params(presets.get_preset("siglip2_so400m_patch16_512")["architecture"])
    assert so["total"] == 1_136_555_698
    # NaFlex B/16 has the 16 x 16 position grid of the fixed B/16 at 256.
    assert (
        presets.get_preset("siglip2_base_patch16_naflex")["params"]
        == presets.get_preset("siglip2_base_patch16_256")["params"]
    )


def tiny_arch(kind="fixed", image_size=16):
    """A tiny architecture whose text head projects 8 -> 16, as g-opt's does."""
    vision = {
        "type": kind,
        "patch_size": 4,
        "hidden_dim": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_dim": 24,
    }
    if kind == "fixed":
        vision["image_size"] = image_size
    else:
        vision.update(max_num_patches=32, position_grid_size=16)
    text = {
        "vocabulary_size": 50,
        "hidden_dim": 8,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_dim": 12,
        "projection_dim": 16,
        "max_sequence_length": 10,
    }
    return {"vision": vision, "text": text}


@pytest.mark.parametrize("image_size", [16, [20, 12]])
def test_formula_matches_fixed_model(image_size):
    arch = tiny_arch("fixed", image_size)
    vision = {k: v for k, v in arch["vision"].items() if k != "type"}
    vision_encoder = SigLIP2VisionEncoder(**vision)
    text_encoder = SigLIP2TextEncoder(**arch["text"])
    backbone = SigLIP2Backbone(vision_encoder, text_encoder)
    counts = presets.count_params(arch)
    assert vision_encoder.count_params() == counts["vision"]
    assert text_encoder.count_params() == counts["text"]
    assert backbone.count_params() == counts["total"]
    # The generic builder gives the same model.
    assert presets.build_backbone_from_config(arch).count_params() == counts["total"]


def test_formula_matches_naflex_model():
    from keras_siglip2.models import SigLIP2NaFlexVisionEncoder as cls

    arch = tiny_arch("naflex")
    backbone = presets.build_backbone_from_config(arch)
    assert isinstance(backbone.vision_encoder, cls)
    counts = presets.count_params(arch)
    assert backbone.vision_encoder.count_params() == counts["vision"]
    assert backbone.count_params() == counts["total"]


# ---------------------------------------------------------------------------
# Package data / tiny preset built from its config.
# ---------------------------------------------------------------------------


def test_package_data_is_preferred(tmp_path, monkeypatch):
    data = tmp_path / "preset_data"
    data.mkdir()
    arch = tiny_arch()
    tiny = {
        "name": "tiny_test",
        "description": "A tiny preset for tests.",
        "architecture": arch,
        "sources": {"transformers": None, "big_vision": None, "keras_hub": None},
        "params": presets.count_params(arch),
        "paper_metrics": {"imagenet_1k_zero_shot_top1": None},
    }
    (data / "tiny_test.json").write_text(json.dumps(tiny))
    monkeypatch.setattr(presets.importlib.resources, "files", lambda package: tmp_path)
    presets.clear_registry_cache()
    assert list(presets.list_presets()) == ["tiny_test"]
    backbone = presets.build_backbone_from_preset_config("tiny_test")
    assert backbone.count_params() == tiny["params"]["total"]
    assert "tiny_test" in presets.format_presets_table()


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(presets.importlib.resources, "files", lambda package: tmp_path)
    monkeypatch.setattr(preset_registry, "REPO_PRESET_DIR", tmp_path / "nowhere")
    presets.clear_registry_cache()
    with pytest.raises(FileNotFoundError, match="No SigLIP 2 preset files"):
        presets.list_presets()


# ---------------------------------------------------------------------------
# Table.
# ---------------------------------------------------------------------------


def test_format_presets_table():
    table = presets.format_presets_table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["name", "type"]
    for name in EXPECTED:
        assert name in table
    row = next(line for line in lines if line.startswith("siglip2_base_patch16_224 "))
    assert "fixed" in row and "224" in row and "375.2" in row and "78.2" in row
    assert "hf,bv,kaggle" in row
    naflex = next(line for line in lines if line.startswith("siglip2_base_patch16_naflex "))
    assert "naflex" in naflex and "hf,bv" in naflex and "kaggle" not in naflex


# ---------------------------------------------------------------------------
# resolve_preset.
# ---------------------------------------------------------------------------


def test_unknown_name_suggests():
    with pytest.raises(ValueError) as info:
        presets.resolve_preset("siglip2_base_patch16_225")
    message = str(info.value)
    assert "Unknown preset 'siglip2_base_patch16_225'" in message
    assert "Did you mean: siglip2_base_patch16_224" in message
    assert message.count("siglip2_") >= 4  # the value + 3 suggestions
    assert "keras_siglip2.list_presets()" in message
    with pytest.raises(ValueError, match="Did you mean"):
        presets.get_preset("so400m")


def test_name_variants_are_accepted():
    assert presets.get_preset("siglip2-base-patch16-224")["name"] == "siglip2_base_patch16_224"
    assert presets.get_preset("google/siglip2-so400m-patch16-naflex")["name"] == "siglip2_so400m_patch16_naflex"


def test_local_directories(tmp_path):
    empty = tmp_path / "not_a_preset"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"is not a preset directory \(no config\.json\)"):
        presets.resolve_preset(str(empty))
    preset_dir = tmp_path / "preset"
    preset_dir.mkdir()
    (preset_dir / "config.json").write_text("{}")
    assert presets.resolve_preset(str(preset_dir)) == str(preset_dir)
    assert presets.resolve_preset(preset_dir) == str(preset_dir)
    a_file = tmp_path / "weights.npz"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        presets.resolve_preset(str(a_file))
    with pytest.raises(ValueError, match="does not exist"):
        presets.resolve_preset(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "handle",
    [
        "kaggle://someone/some-model/keras/some_preset/1",
        "hf://someone/some-preset",
        "gs://bucket/preset",
        "modelscope://someone/preset",
    ],
)
def test_handles_pass_through(handle):
    assert presets.resolve_preset(handle) == handle


def fake_convert_module(calls, save_preset=None):
    module = types.ModuleType("keras_siglip2.convert")

    def from_transformers(path):
        calls.append(("from_transformers", path))
        return "converted-backbone"

    def default_save(backbone, out_dir, tokenizer=None, image_converter=None):
        converter = type(image_converter).__name__ if image_converter is not None else None
        calls.append(("save_preset", backbone, out_dir, tokenizer, converter))
        os.makedirs(out_dir)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write("{}")
        return out_dir

    module.from_transformers = from_transformers
    module.save_preset = save_preset or default_save
    return module


def test_resolve_known_name_downloads_converts_and_caches(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(presets.CACHE_ENV, str(cache))
    calls = []
    source_dir = tmp_path / "hf_snapshot"
    source_dir.mkdir()

    def fake_download(handle):
        calls.append(("download", handle))
        return str(source_dir)

    # A source without tokenizer.model gives no tokenizer.
    assert presets.load_source_tokenizer(str(source_dir)) is None
    monkeypatch.setattr(presets, "download_source", fake_download)
    monkeypatch.setattr(presets, "load_source_tokenizer", lambda path: f"tokenizer of {path}")
    monkeypatch.setitem(sys.modules, "keras_siglip2.convert", fake_convert_module(calls))

    target = presets.resolve_preset("siglip2_base_patch16_224")
    assert target == os.path.join(str(cache), "siglip2_base_patch16_224")
    assert os.path.isfile(os.path.join(target, "config.json"))
    assert calls == [
        ("download", "hf://google/siglip2-base-patch16-224"),
        ("from_transformers", str(source_dir)),
        # With a tokenizer, the preset is complete: the image converter is saved too.
        ("save_preset", "converted-backbone", target, f"tokenizer of {source_dir}",
         "SigLIP2ImageConverter"),
    ]
    # Second time: straight from the cache, nothing downloaded or converted.
    calls.clear()
    assert presets.resolve_preset("siglip2-base-patch16-224") == target
    assert calls == []


def test_resolve_from_big_vision_passes_the_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    module = fake_convert_module(calls)
    module.from_big_vision = lambda path, **kw: calls.append(("from_big_vision", path, kw)) or "bb"
    monkeypatch.setitem(sys.modules, "keras_siglip2.convert", module)
    monkeypatch.setattr(presets, "download_source", lambda handle: f"/downloads/{handle[5:]}")
    target = presets.resolve_preset("siglip2_so400m_patch14_384", source="big_vision")
    assert os.path.isfile(os.path.join(target, "config.json"))
    assert calls[0] == (
        "from_big_vision",
        "/downloads/big_vision/siglip2/siglip2_so400m14_384.npz",
        {"image_size": 384},
    )


def test_resolve_missing_source_kind(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="has no 'keras_hub' source"):
        presets.resolve_preset("siglip2_base_patch16_naflex", source="keras_hub")


def test_from_preset_by_name_end_to_end(tmp_path, monkeypatch):
    """`SigLIP2Backbone.from_preset(name)` through the cache, with a tiny backbone
    standing in for the converted checkpoint and the real atomic preset writer."""
    from keras_siglip2.convert.common import save_preset

    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    tiny = presets.build_backbone_from_config(tiny_arch())
    calls = []
    module = fake_convert_module(calls, save_preset=save_preset)
    module.from_transformers = lambda path: tiny
    monkeypatch.setitem(sys.modules, "keras_siglip2.convert", module)
    monkeypatch.setattr(presets, "download_source", lambda handle: str(tmp_path))

    loaded = SigLIP2Backbone.from_preset("siglip2_base_patch16_224")
    assert isinstance(loaded, SigLIP2Backbone)
    assert loaded.count_params() == tiny.count_params()
    for a, b in zip(loaded.weights, tiny.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_download_source_handles(tmp_path, monkeypatch):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen["repo_id"] = repo_id
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert presets.download_source("hf://google/siglip2-base-patch16-224") == str(tmp_path)
    assert seen["repo_id"] == "google/siglip2-base-patch16-224"

    kaggle = "kaggle://keras/siglip/keras/siglip2_base_patch16_224/1"
    assert presets.download_source(kaggle) == kaggle

    import tensorflow as tf

    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    copies = []

    def fake_copy(src, dst, overwrite=False):
        copies.append(src)
        with open(dst, "wb") as f:
            f.write(b"npz")

    monkeypatch.setattr(tf.io.gfile, "copy", fake_copy)
    path = presets.download_source("gs://big_vision/siglip2/siglip2_b16_224.npz")
    assert path == os.path.join(str(tmp_path / "cache"), "downloads", "siglip2_b16_224.npz")
    assert open(path, "rb").read() == b"npz"
    # Already downloaded: no second copy.
    assert presets.download_source("gs://big_vision/siglip2/siglip2_b16_224.npz") == path
    assert copies == ["gs://big_vision/siglip2/siglip2_b16_224.npz"]


def test_released_source_handle_goes_through_conversion(tmp_path, monkeypatch):
    """`from_preset("hf://google/siglip2-...")` must not hand a transformers repo to
    keras-hub's loader: the handle of a known preset is downloaded and converted."""
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    source_dir = tmp_path / "hf_snapshot"
    source_dir.mkdir()
    monkeypatch.setattr(presets, "download_source", lambda handle: calls.append(handle) or str(source_dir))
    monkeypatch.setitem(sys.modules, "keras_siglip2.convert", fake_convert_module(calls))
    target = presets.resolve_preset("hf://google/siglip2-base-patch16-naflex/")
    assert target == os.path.join(str(tmp_path / "cache"), "siglip2_base_patch16_naflex")
    assert calls[0] == "hf://google/siglip2-base-patch16-naflex"
    assert calls[1] == ("from_transformers", str(source_dir))


@pytest.mark.parametrize("name", ["siglip2_so400m_patch14_384", "siglip2_so400m_patch16_naflex"])
def test_image_converter_for_architecture(name):
    from keras_siglip2.preprocessing import SigLIP2ImageConverter, SigLIP2NaFlexImageConverter

    arch = presets.get_preset(name)["architecture"]
    converter = presets.image_converter_for_architecture(arch)
    if arch["vision"]["type"] == "fixed":
        assert isinstance(converter, SigLIP2ImageConverter)
        assert tuple(converter.image_size) == (384, 384)
    else:
        assert isinstance(converter, SigLIP2NaFlexImageConverter)
        assert converter.patch_size == 16 and converter.max_num_patches == 256


# ---------------------------------------------------------------------------
# The table as printed by `list_presets()` and `siglip2 presets`; the wheel.
# ---------------------------------------------------------------------------


def test_list_presets_prints_as_a_table():
    listed = presets.list_presets()
    assert isinstance(listed, dict) and list(listed) == EXPECTED
    assert repr(listed).startswith(presets.format_presets_table())
    assert str(listed) == repr(listed)
    assert json.loads(json.dumps(listed)) == dict(listed)
    # The table shows what the listing holds.
    del listed["siglip2_base_patch16_224"]
    assert "siglip2_base_patch16_224 " not in repr(listed)
    assert "siglip2_base_patch16_256 " in repr(listed)


def test_siglip2_presets_prints_the_table(capsys):
    from keras_siglip2 import cli

    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert out == presets.format_presets_table() + "\n"
    for name in EXPECTED:
        assert f"\n{name} " in out


def test_wheel_carries_the_presets(tmp_path):
    """`pip wheel` (no build isolation, nothing downloaded) on a copy of the sources:
    every presets/*.json is inside the wheel as keras_siglip2/preset_data/, unchanged."""
    import shutil
    import subprocess
    import zipfile

    import setuptools  # noqa: F401  (the build backend pyproject names: its absence fails)
    root = presets.REPO_PRESET_DIR.parent
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(root / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "preset_data")
    shutil.copytree(root / "keras_siglip2", src / "keras_siglip2", ignore=ignore)
    shutil.copytree(root / "presets", src / "presets")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path / "dist")],
        cwd=src, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("keras_siglip2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {n.rsplit("/", 1)[1]: archive.read(n) for n in archive.namelist()
                  if n.startswith("keras_siglip2/preset_data/")}
        assert "keras_siglip2/cli/__init__.py" in archive.namelist()  # subpackages are packed
    assert sorted(packed) == sorted(f"{name}.json" for name in EXPECTED)
    for name in EXPECTED:
        assert packed[f"{name}.json"] == (root / "presets" / f"{name}.json").read_bytes()
