"""Writing converted checkpoints as preset directories (`convert.save_preset`): a failed
write never leaves a half-written preset (nor its temporary sibling) and never damages
the preset it was to replace; and `siglip2 convert` (`cli.convert_checkpoint`) takes the
tokenizer from the source when the source carries one (a Hugging Face directory's
`tokenizer.model`, a keras-hub preset's SentencePiece proto)."""

import shutil

import numpy as np
import pytest

from keras_siglip2.convert import save_preset
from keras_siglip2.models import SigLIP2Backbone
from tests.conftest import tiny_backbone
from tests.preprocessing.conftest import CORPUS, train_sentencepiece


class FailingTokenizer:
    """Writes part of its files, then fails, as a full disk or a bad proto would."""

    def save_to_preset(self, preset_dir):
        with open(f"{preset_dir}/tokenizer.json", "w") as f:
            f.write("{")
        raise RuntimeError("disk full")


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(image_size=16, vision_width=32, text_width=32)


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".partial-"))


def weights_of(path):
    return [np.asarray(v) for v in SigLIP2Backbone.from_preset(str(path)).weights]


def test_failed_write_leaves_nothing(backbone, tmp_path):
    out = tmp_path / "preset"
    with pytest.raises(RuntimeError, match="disk full"):
        save_preset(backbone, out, tokenizer=FailingTokenizer())
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_preset(backbone, tmp_path):
    out = tmp_path / "preset"
    save_preset(backbone, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError, match="disk full"):
        save_preset(tiny_backbone(image_size=16, vision_width=32, text_width=32, seed=1), out,
                    tokenizer=FailingTokenizer(), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert leftovers(tmp_path) == []
    for got, expected in zip(weights_of(out), [np.asarray(v) for v in backbone.weights]):
        np.testing.assert_array_equal(got, expected)


def test_existing_directory_is_refused_unless_overwrite(backbone, tmp_path):
    out = tmp_path / "preset"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="preset exists and is not empty.*overwrite=True"):
        save_preset(backbone, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    save_preset(backbone, out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.weights.h5").is_file()
    assert leftovers(tmp_path) == []


def test_transformers_directory_tokenizer_is_kept(tmp_path):
    """`siglip2 convert --from transformers DIR OUT` without --tokenizer: the
    directory's tokenizer.model becomes the preset's vocabulary, and the preset
    is complete (preprocessor loads, tokenizes as the SentencePiece model does)."""
    import torch  # noqa: F401  (the [test] extra installs torch and transformers:
    import transformers  # noqa: F401  their absence fails, it does not skip)
    from keras_siglip2 import presets
    from keras_siglip2.cli import convert_checkpoint
    from keras_siglip2.preprocessing import SigLIP2Preprocessor, SigLIP2Tokenizer
    from tests.convert.test_transformers import tiny_hf_model

    proto = train_sentencepiece(CORPUS[:4], vocab_size=80, byte_fallback=False)  # < 300 ids
    hf_dir = tmp_path / "hf"
    tiny_hf_model().save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(proto)
    assert isinstance(presets.load_source_tokenizer(str(hf_dir)), SigLIP2Tokenizer)

    out = tmp_path / "preset"
    _, backbone, has_tokenizer = convert_checkpoint("transformers", str(hf_dir), str(out))
    assert has_tokenizer
    assert (out / "assets" / "tokenizer" / "vocabulary.spm").read_bytes() == proto
    preprocessor = SigLIP2Preprocessor.from_preset(str(out))
    assert preprocessor.tokenizer.sequence_length == backbone.text_encoder.max_sequence_length == 12
    import sentencepiece as spm

    expected = spm.SentencePieceProcessor(model_proto=proto).encode("a cat")[:11] + [1]
    expected += [0] * (12 - len(expected))
    ids = np.asarray(preprocessor({"texts": ["A CAT"]})["token_ids"])[0]
    assert list(ids) == expected


def test_keras_hub_preset_tokenizer_is_kept(tmp_path):
    """`siglip2 convert --from keras_hub PRESET OUT`: the keras-hub preset's
    SentencePiece proto becomes the preset's vocabulary."""
    import keras_hub

    from keras_siglip2.cli import convert_checkpoint
    from tests.convert.test_keras_hub import tiny_keras_hub_backbone

    # Gemma's special ids, plus the "</s>" piece keras-hub's SigLIPTokenizer requires.
    proto = train_sentencepiece(CORPUS[:4], vocab_size=80, byte_fallback=False,
                                user_defined_symbols=["</s>"])
    source = tmp_path / "kh"
    tiny_keras_hub_backbone().save_to_preset(str(source))
    keras_hub.tokenizers.SigLIPTokenizer(proto=proto).save_to_preset(str(source))
    out = tmp_path / "preset"
    _, _, has_tokenizer = convert_checkpoint("keras_hub", str(source), str(out))
    assert has_tokenizer
    assert (out / "assets" / "tokenizer" / "vocabulary.spm").read_bytes() == proto
    # Without a tokenizer in the source there is none in the preset.
    shutil.rmtree(source / "assets")
    (source / "tokenizer.json").unlink()
    _, _, has_tokenizer = convert_checkpoint("keras_hub", str(source), str(tmp_path / "bare"))
    assert not has_tokenizer and not (tmp_path / "bare" / "tokenizer.json").exists()
