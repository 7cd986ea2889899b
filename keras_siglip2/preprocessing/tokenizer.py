"""SigLIP 2 text tokenizer (paper sec. 2, "Architecture, training data, optimizer"):
the multilingual Gemma SentencePiece vocabulary (256k pieces) with big_vision's text
preprocessing for the contrastive text tower: lowercase, no BOS, "sticky" EOS (a
truncated text still ends with EOS) and `<pad>` padding to 64 tokens."""

import base64
import binascii
import os

import keras
import numpy as np
from keras.src.saving import serialization_lib
from keras_hub.tokenizers import SentencePieceTokenizer

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.preprocessing.components import (  # noqa: F401 (also imported from here)
    deserialize_component,
    standalone_component_config,
)
# Preset names -> directories, through the resolver `keras_siglip2.presets` registers.
from keras_siglip2.models.preset_files import resolve_preset_path as resolve_preset

try:
    import tensorflow as tf
except ImportError:  # The pure-Python path below works without TensorFlow.
    tf = None

try:
    import sentencepiece as spm
except ImportError:
    spm = None

from keras_hub.src.utils.tensor_utils import preprocessing_function


PAD_ID = 0
EOS_ID = 1
_PAD_LIKE = ("<pad>", "[pad]", "<|pad|>")
_EOS_LIKE = ("<eos>", "</s>", "[eos]", "<|endoftext|>", "<|eos|>")
_LOWERCASE_MODES = ("unicode", "ascii", "none")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _is_int_dtype(dtype):
    try:
        return "int" in keras.backend.standardize_dtype(dtype)
    except ValueError:
        return False


def _standardize_lowercase(lowercase):
    if lowercase is True:
        return "unicode"
    if lowercase is False or lowercase is None:
        return "none"
    if isinstance(lowercase, str) and lowercase.lower() in _LOWERCASE_MODES:
        return lowercase.lower()
    raise ValueError(
        "`lowercase` must be True / 'unicode' (lowercase every script), 'ascii' "
        "(only A-Z, exactly like big_vision's `tf.strings.lower`) or False / 'none'; "
        f"got lowercase={lowercase!r}."
    )


def _standardize_sequence_length(sequence_length, name="sequence_length"):
    if sequence_length is None:
        return None
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, (int, np.integer))
        or sequence_length < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive int (64 for the released SigLIP 2 "
            f"models) or None; got {name}={sequence_length!r}."
        )
    return int(sequence_length)


# --- The tokenizer -------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Tokenizer(SentencePieceTokenizer):
    """Gemma SentencePiece tokenizer with SigLIP 2's text preprocessing.

    Every text is lowercased, tokenized without a BOS token, cut to
    `sequence_length - 1` pieces, followed by the EOS id (1) and padded with the
    `<pad>` id (0) to `sequence_length`. EOS is therefore always present and is the
    last real token even when the text was truncated ("sticky" EOS in big_vision).
    Punctuation is kept (SigLIP 1's keras-hub preprocessor removed it; SigLIP 2
    does not).

    The output is a dense int32 array: `(sequence_length,)` for one string,
    `(*batch_shape, sequence_length)` for an array or (nested) list of strings. When
    `sequence_length=None` the texts are neither truncated nor padded (EOS is still
    appended) and a batch comes back ragged (`tf.RaggedTensor` in `tf.data`, a list
    of lists in Python). The layer runs eagerly on Python strings / lists / NumPy
    arrays (pure Python SentencePiece) and inside `tf.data` (`ds.map(tokenizer)`,
    TensorFlow Text); both give the same ids.

    Args:
        proto: the SentencePiece model: a file path (local, or `gs://...` read
            through `tf.io.gfile`), or the serialized model bytes. May be None
            while a preset loads its assets. Its id 0 must be `<pad>` and id 1
            `<eos>` (as in Gemma's `<pad>`, `<eos>`, `<bos>`, `<unk>` = 0..3).
        sequence_length: int or None. Output length, 64 for every released model.
        lowercase: `True` / `"unicode"` (default): lowercase every script
            (`"ÉCOLE"` -> `"école"`; CJK, Hindi, ... have no case and are kept).
            `"ascii"`: lowercase only A-Z, which is exactly what big_vision's
            `tf.strings.lower` does (`"ÉCOLE"` -> `"École"`); use it to reproduce
            big_vision token ids bit for bit on non-ASCII capitals. `False` /
            `"none"`: keep the case.
        dtype: an integer dtype for the ids, `"int32"` by default.

    Example:
    ```python
    tokenizer = keras_siglip2.preprocessing.SigLIP2Tokenizer.from_preset(
        "siglip2_base_patch16_224"
    )
    tokenizer(["A photo of a cat.", "Une photo d'un CHAT."])  # (2, 64) int32
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(32).map(tokenizer)
    tokenizer.detokenize(tokenizer("Hello"))  # "hello"
    ```
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        proto=None,
        sequence_length=64,
        lowercase="unicode",
        dtype="int32",
        **kwargs,
    ):
        # SigLIP 2 never prepends BOS and always appends EOS itself (after
        # truncation), so the SentencePiece-level flags stay off.
        if kwargs.pop("add_bos", False):
            raise ValueError(
                "SigLIP 2 text preprocessing uses no BOS token; got add_bos=True."
            )
        if not kwargs.pop("add_eos", True):
            raise ValueError(
                "SigLIP 2 text preprocessing always ends a text with EOS (the text "
                "tower reads the sequence it terminates); got add_eos=False."
            )
        if not _is_int_dtype(dtype):
            raise ValueError(
                f"`dtype` must be an integer dtype for the token ids; got dtype={dtype!r}."
            )
        self.lowercase = _standardize_lowercase(lowercase)
        self._special_token_attrs = [
            "pad_token",
            "end_token",
            "start_token",
            "unknown_token",
        ]
        for attr in self._special_token_attrs:
            setattr(self, attr, None)
            setattr(self, f"{attr}_id", None)
        super().__init__(
            proto=proto,
            sequence_length=_standardize_sequence_length(sequence_length),
            dtype=dtype,
            add_bos=False,
            add_eos=False,
            **kwargs,
        )

    # --- Vocabulary --------------------------------------------------------------

    def set_proto(self, proto):
        """Sets the SentencePiece model (path, `gs://` path or bytes) and checks that
        it is a Gemma-style model (id 0 `<pad>`, id 1 `<eos>`)."""
        if proto is None:
            return super().set_proto(None)
        if isinstance(proto, os.PathLike):
            proto = os.fspath(proto)
        if isinstance(proto, str):
            proto = self._read_proto_path(proto)
        if not isinstance(proto, bytes):
            raise ValueError(
                "`proto` must be a path to a SentencePiece model file or the model's "
                f"serialized bytes; got an object of type {type(proto).__name__}."
            )
        self._check_proto(proto)
        super().set_proto(proto)

    def _read_proto_path(self, path):
        # Long valid base64 strings are serialized protos (keras-hub's convention).
        if len(path) > 2048:
            try:
                return base64.b64decode(path, validate=True)
            except binascii.Error:
                pass
        if serialization_lib.in_safe_mode():
            raise ValueError(
                "Refusing to read the SentencePiece file "
                f"{path!r} named in a config while deserializing in safe mode. If "
                "you trust its source, load with `safe_mode=False` or call "
                "`keras.config.enable_unsafe_deserialization()`."
            )
        if "://" in path:
            if tf is None:
                raise ImportError(
                    f"Reading the SentencePiece model {path!r} needs TensorFlow "
                    "(`tf.io.gfile`)."
                )
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"SentencePiece model file not found: {path!r}.")
            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read()
        local = os.path.expanduser(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"SentencePiece model file not found: {path!r}. `proto` must be the "
                "path of a SentencePiece `.model` / `.spm` file (e.g. big_vision's "
                "`gemma_tokenizer.model`) or its bytes."
            )
        with open(local, "rb") as f:
            return f.read()

    def _check_proto(self, proto):
        """Raises ValueError unless `proto` is a SentencePiece model whose id 0 is a
        padding piece and id 1 an end-of-sequence piece."""
        if spm is None:
            raise ImportError(
                "SigLIP2Tokenizer needs the `sentencepiece` package "
                "(`pip install sentencepiece`)."
            )
        if not proto:
            raise ValueError("`proto` is empty: expected a SentencePiece model.")
        try:
            processor = spm.SentencePieceProcessor(model_proto=proto)
            size = processor.vocab_size()
        except Exception as e:  # sentencepiece raises RuntimeError / OSError.
            raise ValueError(
                f"`proto` ({len(proto)} bytes) is not a SentencePiece model: "
                f"{type(e).__name__}: {e}. SigLIP 2 expects the Gemma SentencePiece "
                "model (big_vision's `gemma_tokenizer.model`)."
            ) from None
        if size < 2:
            raise ValueError(
                f"The SentencePiece model has {size} piece(s); SigLIP 2 needs at "
                "least <pad> (id 0) and <eos> (id 1)."
            )
        pieces = (processor.IdToPiece(0), processor.IdToPiece(1))
        pad_ok = processor.pad_id() == PAD_ID or pieces[0].lower() in _PAD_LIKE
        eos_ok = processor.eos_id() == EOS_ID or pieces[1].lower() in _EOS_LIKE
        if not (pad_ok and eos_ok):
            raise ValueError(
                "SigLIP 2 expects a Gemma-style SentencePiece model whose id 0 is the "
                "padding piece '<pad>' and id 1 the end-of-sequence piece '<eos>' "
                "(texts are padded with id 0 and end with id 1, as the released "
                f"models were trained). This model has id 0 = {pieces[0]!r} and "
                f"id 1 = {pieces[1]!r} (its pad_id={processor.pad_id()}, "
                f"eos_id={processor.eos_id()})."
            )

    def _update_special_token_ids(self):
        # Called by `set_proto` once the vocabulary is known; ids 0 / 1 were checked.
        processor = self._sentence_piece_spm
        vocabulary = self._vocabulary
        specials = {
            "pad_token": PAD_ID,
            "end_token": EOS_ID,
            "start_token": processor.bos_id(),
            "unknown_token": processor.unk_id(),
        }
        for attr, token_id in specials.items():
            if token_id is None or token_id < 0 or token_id >= len(vocabulary):
                setattr(self, attr, None)
                setattr(self, f"{attr}_id", None)
            else:
                setattr(self, attr, vocabulary[token_id])
                setattr(self, f"{attr}_id", int(token_id))
        self._special_token_attrs = [
            attr for attr in specials if getattr(self, f"{attr}_id") is not None
        ]

    def load_preset_assets(self, preset):
        try:
            super().load_preset_assets(preset)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"Preset {preset!r} has no SentencePiece model for "
                f"{type(self).__name__} (expected assets/tokenizer/vocabulary.spm "
                "next to tokenizer.json). Converted big_vision checkpoints carry no "
                "tokenizer: attach one with `siglip2 convert ... --tokenizer "
                f"gemma_tokenizer.model`. ({e})"
            ) from None

    # --- Tokenization ------------------------------------------------------------

    def _resolve_length(self, sequence_length):
        if sequence_length is None:
            return self.sequence_length
        return _standardize_sequence_length(sequence_length)

    def tokenize(self, inputs, sequence_length=None):
        """Lowercases, tokenizes, truncates to `sequence_length - 1`, appends EOS (1)
        and pads with `<pad>` (0). `sequence_length` overrides the layer's for this
        call."""
        self._check_vocabulary()
        if self._use_tf_workflow():
            return self._tokenize_tf(inputs, sequence_length=sequence_length)
        return self._tokenize_spm(inputs, sequence_length=sequence_length)

    def _lower_tf(self, inputs):
        if self.lowercase == "unicode":
            return tf.strings.lower(inputs, encoding="utf-8")
        if self.lowercase == "ascii":
            return tf.strings.lower(inputs)
        return inputs

    def _sentence_piece_tokenize(self, flat):
        """tf_text SentencePiece pieces of the 1-D strings `flat`.

        `tf.random.set_seed` (hence `keras.utils.set_random_seed`) resets TF's eager
        kernel cache, which deletes the resource of a SentencePiece op made before it
        (tensorflow/text#570): a dataset built after a reseed would fail with
        "SentencepieceOp ... does not exist". So while tracing (tf.data map,
        tf.function) a fresh op is made inside the graph, and an eager call whose
        cached op lost its resource rebuilds it once."""
        if not tf.executing_eagerly():
            import tensorflow_text as tf_text  # lazy: optional, only for graph-mode tokenization

            op = tf_text.SentencepieceTokenizer(
                model=self.proto, out_type=self.compute_dtype, add_bos=self.add_bos,
                add_eos=self.add_eos,
            )
            return op.tokenize(flat)
        self._maybe_initialized_tf()
        try:
            return self._sentence_piece.tokenize(flat)
        except tf.errors.NotFoundError:
            self._set_proto_tf(self.proto)
            return self._sentence_piece.tokenize(flat)

    @preprocessing_function
    def _tokenize_tf(self, inputs, sequence_length=None):
        length = self._resolve_length(sequence_length)
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string:
            raise ValueError(
                f"{type(self).__name__} takes strings; got a tensor of dtype "
                f"{inputs.dtype.name}."
            )
        if inputs.shape.rank is None:
            raise ValueError(
                f"{type(self).__name__} needs inputs of known rank; use "
                "`tf.ensure_shape` on the text tensor."
            )
        batch_shape = tf.shape(inputs)
        static_batch_shape = inputs.shape.as_list()
        flat = self._lower_tf(tf.reshape(inputs, [-1]))
        tokens = self._sentence_piece_tokenize(flat)
        tokens = tf.cast(tokens, self.compute_dtype)
        if length is not None:
            tokens = tokens[:, : length - 1]
        eos = tf.fill([tf.shape(flat)[0], 1], tf.constant(EOS_ID, self.compute_dtype))
        tokens = tf.concat([tokens, eos], axis=1)
        if length is None:
            if len(static_batch_shape) == 0:
                return tokens[0]
            if len(static_batch_shape) == 1:
                return tokens
            raise ValueError(
                "With sequence_length=None only a scalar or a 1-D batch of strings "
                f"can be tokenized; got shape {static_batch_shape}."
            )
        tokens = tokens.to_tensor(
            default_value=tf.constant(PAD_ID, self.compute_dtype),
            shape=[None, length],
        )
        tokens = tf.reshape(tokens, tf.concat([batch_shape, [length]], axis=0))
        return tf.ensure_shape(tokens, static_batch_shape + [length])

    def _lower_python(self, texts):
        if self.lowercase == "none":
            return texts
        if self.lowercase == "ascii":
            return [t.translate(_ASCII_LOWER) for t in texts]
        if tf is not None:
            # The same op as the tf.data path, so both paths give identical ids
            # (Python's `str.lower` follows a newer Unicode version than
            # TensorFlow's ICU for a few dozen rare letters).
            lowered = tf.strings.lower(tf.constant(texts, tf.string), encoding="utf-8")
            return [t.decode("utf-8") for t in lowered.numpy().tolist()]
        return [t.lower() for t in texts]

    def _canonicalize_python(self, inputs):
        """Flat list of str and the batch shape (() for a single string)."""

        def as_str(x):
            if isinstance(x, bytes):
                return x.decode("utf-8")
            if isinstance(x, (str, np.str_)):
                return str(x)
            raise ValueError(
                f"{type(self).__name__} takes strings (a str, a list of str or a "
                f"string array); found an element of type {type(x).__name__}: {x!r}."
            )

        if isinstance(inputs, (str, bytes)):
            return [as_str(inputs)], ()
        if tf is not None and isinstance(inputs, tf.Tensor):
            if inputs.dtype != tf.string:
                raise ValueError(
                    f"{type(self).__name__} takes strings; got a tensor of dtype "
                    f"{inputs.dtype.name}."
                )
            inputs = inputs.numpy()
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                return [], (0,)
            try:
                array = np.array(inputs, dtype=object)
            except ValueError:
                array = None
            if array is None or array.dtype != object or any(
                isinstance(v, (list, tuple)) for v in array.reshape(-1)
            ):
                raise ValueError(
                    f"{type(self).__name__} got a ragged nested list of strings; "
                    "nested lists must be rectangular."
                )
            inputs = array
        if isinstance(inputs, np.ndarray):
            if inputs.dtype.kind not in ("U", "S", "O"):
                raise ValueError(
                    f"{type(self).__name__} takes strings; got an array of dtype "
                    f"{inputs.dtype}."
                )
            return [as_str(v) for v in inputs.reshape(-1).tolist()], inputs.shape
        raise ValueError(
            f"{type(self).__name__} takes a str, a list of str or a string "
            f"array/tensor; got {type(inputs).__name__}."
        )

    def _tokenize_spm(self, inputs, sequence_length=None):
        length = self._resolve_length(sequence_length)
        self._maybe_initialized_spm()
        texts, batch_shape = self._canonicalize_python(inputs)
        ids = self._sentence_piece_spm.Encode(
            self._lower_python(texts), add_bos=False, add_eos=False
        )
        if length is None:
            ids = [list(t) + [EOS_ID] for t in ids]
            if len(batch_shape) == 0:
                return np.array(ids[0], dtype=self.compute_dtype)
            if len(batch_shape) == 1:
                return ids
            raise ValueError(
                "With sequence_length=None only a str or a flat list of str can be "
                f"tokenized; got batch shape {tuple(batch_shape)}."
            )
        out = np.full((len(ids), length), PAD_ID, dtype=self.compute_dtype)
        for row, t in enumerate(ids):
            t = list(t[: length - 1]) + [EOS_ID]
            out[row, : len(t)] = t
        return out.reshape(tuple(batch_shape) + (length,))

    def call(self, inputs, *args, training=None, **kwargs):
        return self.tokenize(inputs, *args, **kwargs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(
            tuple(input_spec.shape) + (self.sequence_length,), dtype=self.compute_dtype
        )

    # --- Serialization -----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.pop("add_bos", None)
        config.pop("add_eos", None)
        config["lowercase"] = self.lowercase
        return config

    @classmethod
    def from_preset(cls, preset, config_file="tokenizer.json", **kwargs):
        """Loads the tokenizer of a preset: a keras-siglip2 preset name, a local
        preset directory (also one holding only `tokenizer.json` + assets, as
        written by `tokenizer.save_to_preset`), or a `kaggle://` / `hf://` / `gs://`
        handle."""
        config = standalone_component_config(preset, config_file)
        if config is not None:
            tokenizer = deserialize_component(
                cls, config, preset, config_file, **kwargs
            )
            tokenizer.load_preset_assets(os.path.expanduser(os.fspath(preset)))
            return tokenizer
        return super().from_preset(resolve_preset(preset), config_file, **kwargs)
