"""Export of SigLIP 2 for serving (paper sec. 2: the two towers and the sigmoid logit
head at inference): a TensorFlow SavedModel with image / text embedding signatures, or a
LiteRT (`.tflite`) flatbuffer of one tower.

SavedModel signatures (loadable with plain `tf.saved_model.load`, no keras_siglip2):

- `embed_images`: `images` float32 (B, H, W, 3) in [-1, 1] at the model's resolution,
  or for a NaFlex tower `pixel_patches` float32 (B, N, p*p*3), `patch_positions` int32
  (B, N, 2), `patch_mask` int32 (B, N) (any N) -> {"embeddings": (B, D)};
- `embed_texts`: `token_ids` int32 (B, L) (L = the text tower's length, 64) ->
  {"embeddings": (B, D)};
- `embed_image_bytes` (when the export has an image converter: the preset's
  `image_converter.json`, or the `image_converter` argument): `image_bytes` string (B,)
  of encoded JPEG / PNG / GIF / BMP files of any sizes -> {"embeddings": (B, D)}. Each
  file is decoded to uint8 RGB and preprocessed in the graph exactly as the converter
  does it (its `match` mode: big_vision's or transformers' resize; NaFlex patches
  padded to `max_num_patches`), so a server needs no preprocessing code;
- `score` (with both towers): `image_embeddings` (B_img, D), `text_embeddings`
  (B_txt, D) -> {"logits": exp(t) * cos + b, "probabilities": sigmoid(logits)}, both
  (B_img, B_txt).

Embeddings are L2-normalized as the model does, z / (||z|| + 1e-8). The LiteRT file
holds one tower (the image tower by default) with the same input and output names; a
NaFlex tower is exported at N = `max_num_patches` (LiteRT needs a static sequence).

How: the graph is traced with the TensorFlow backend (`keras.export.ExportArchive`),
which gives a plain TF graph (no XlaCallModule) that TF Serving runs on any device and
that TF's LiteRT converter (`tf.lite.TFLiteConverter`) accepts. Under another backend the
model's weights are written to a temporary preset and a TensorFlow-backend subprocess
reads them and writes the export (the conversion also stays out of the caller's memory,
see tensorflow#122598).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import keras
import keras_hub

from keras_siglip2.layers import l2_normalize
from keras_siglip2.models import SigLIP2Backbone, SigLIP2TextEncoder, SigLIP2VisionEncoder
from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.preprocessing.image_converter import IMAGE_CONVERTER_CONFIG_FILE
from keras_siglip2.presets import resolve_preset

FORMATS = ("saved_model", "litert")
TOWERS = ("vision", "text", "both")


def _check_args(format, tower, out_path):
    if format not in FORMATS:
        raise ValueError(f"`format`={format!r} is not supported; expected one of {list(FORMATS)}.")
    if tower is not None and tower not in TOWERS:
        raise ValueError(f"`tower`={tower!r} is not valid; expected one of {list(TOWERS)} or None.")
    if format == "litert" and tower == "both":
        raise ValueError(
            "A LiteRT file holds one tower: pass tower='vision' (default) or tower='text', "
            "and export the other tower to a second file."
        )
    if not isinstance(out_path, (str, os.PathLike)):
        raise TypeError(f"`out_path` must be a path; got {type(out_path).__name__}.")
    out_path = os.path.abspath(os.fspath(out_path))
    if os.path.exists(out_path):
        raise FileExistsError(
            f"`out_path` {out_path} already exists; choose a new path (export never "
            "overwrites)."
        )
    return out_path


def _model_kind(model):
    """"backbone", "vision", "text" or "pretrainer" for a model object; TypeError else."""

    if isinstance(model, SigLIP2Backbone):
        return "backbone"
    if isinstance(model, (SigLIP2VisionEncoder, SigLIP2NaFlexVisionEncoder)):
        return "vision"
    if isinstance(model, SigLIP2TextEncoder):
        return "text"
    if isinstance(getattr(model, "backbone", None), SigLIP2Backbone):
        return "pretrainer"
    raise TypeError(
        "`model_or_preset` must be a SigLIP2Backbone, a SigLIP2 vision or text encoder, a "
        "SigLIP2Pretrainer, a preset name or a preset directory; got "
        f"{type(model).__name__}."
    )


def _resolve_tower(kind, tower, format):
    """The tower(s) to export for a model of `kind` ("backbone", "vision", "text",
    "pretrainer"), or a ValueError."""
    if kind == "pretrainer" and tower is None:
        raise ValueError(
            "A SigLIP2Pretrainer is a training-only model (LocCa decoder, SILC/TIPS heads, "
            "EMA teacher never enter the exported model): say which tower of its backbone "
            "to export with tower='vision', 'text' or 'both' (or export "
            "`pretrainer.backbone`)."
        )
    if kind in ("vision", "text"):
        if tower not in (None, kind):
            raise ValueError(
                f"The model is a {kind} tower only; `tower`={tower!r} cannot be exported "
                "from it."
            )
        return kind
    if tower is None:
        return "vision" if format == "litert" else "both"
    return tower


def export(model_or_preset, out_path, format="saved_model", tower=None, dtype="float32",
           image_converter=None):
    """Exports a SigLIP 2 model for serving; returns the absolute `out_path`.

    Args:
        model_or_preset: a `SigLIP2Backbone`, a vision or text encoder, a
            `SigLIP2Pretrainer` (its backbone; `tower` required), a preset name or a
            local preset directory.
        out_path: the SavedModel directory or `.tflite` file to write; must not exist.
        format: "saved_model" or "litert".
        tower: "vision", "text" or "both" (SavedModel only). Default: every tower the
            model has for a SavedModel, the image tower for LiteRT.
        dtype: compute dtype of the exported graph when the weights are (re)loaded,
            "float32" by default (serving inputs and outputs are float32).
        image_converter: the image converter behind the `embed_image_bytes`
            signature (SavedModel with the image tower only). Default: the preset's
            own (`image_converter.json`), with the `match` mode it records; none when
            a model is passed without one (then no `embed_image_bytes`).

    Example:
    ```python
    keras_siglip2.export.export("siglip2_base_patch16_224", "siglip2_b16", "saved_model")
    keras_siglip2.export.export(backbone, "vision.tflite", format="litert")
    ```
    """
    out_path = _check_args(format, tower, out_path)
    parent = os.path.dirname(out_path)
    if isinstance(model_or_preset, (str, os.PathLike)):
        source = resolve_preset(os.fspath(model_or_preset))
        kind = _preset_kind(source)
        tower = _resolve_tower(kind, tower, format)
        model = None
        if image_converter is None and tower != "text" and format == "saved_model":
            image_converter = _preset_image_converter(source)
    else:
        kind = _model_kind(model_or_preset)
        tower = _resolve_tower(kind, tower, format)
        model = model_or_preset.backbone if kind == "pretrainer" else model_or_preset
        source = None
    os.makedirs(parent, exist_ok=True)

    if format != "saved_model" or tower == "text":
        image_converter = None
    if keras.backend.backend() == "tensorflow":
        if model is None:
            model = _load_preset(source, dtype)
        _export_tf(model, out_path, format, tower, image_converter)
        return out_path
    with tempfile.TemporaryDirectory(prefix=".siglip2-export-", dir=parent) as tmp:
        if model is not None:
            source = os.path.join(tmp, "preset")
            model.save_to_preset(source)
        converter = None
        if image_converter is not None:
            converter = keras.saving.serialize_keras_object(image_converter)
        _run_tf_worker(
            {"preset": source, "out_path": out_path, "format": format, "tower": tower,
             "dtype": dtype, "image_converter": converter}
        )
    return out_path


def _preset_image_converter(source):
    """The preset's image converter (with its recorded `match`), or None if the
    preset has no `image_converter.json`."""
    if not os.path.isfile(os.path.join(source, IMAGE_CONVERTER_CONFIG_FILE)):
        return None
    return _load_image_converter(source)


def _load_image_converter(source):
    import keras_siglip2  # noqa: F401  # lazy: the package root registers the converters

    return keras_hub.layers.ImageConverter.from_preset(source)


def _preset_kind(source):
    """"backbone", "vision" or "text" from a preset directory's config.json, without
    building the model (remote handles are assumed to hold a backbone)."""
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        return "backbone"
    with open(config_path) as f:
        name = json.load(f).get("registered_name", "")
    for kind, suffix in (("text", "SigLIP2TextEncoder"), ("vision", "VisionEncoder"),
                         ("backbone", "SigLIP2Backbone")):
        if name.endswith(suffix):
            return kind
    raise ValueError(
        f"Preset {source} holds a {name!r}, not a SigLIP 2 backbone or tower."
    )


def _load_preset(source, dtype):
    import keras_siglip2  # noqa: F401  # lazy: the package root registers the classes

    return keras_hub.models.Backbone.from_preset(source, dtype=dtype)


WORKER = "import sys; from keras_siglip2.export import _worker; _worker(sys.argv[1])"


def _run_tf_worker(args):
    """Runs `_export_tf` on a preset in a fresh TensorFlow-backend Python."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(
            f"Export to {args['out_path']} failed in the TensorFlow-backend process: "
            f"{detail}\n" + "\n".join(lines[-30:])
        )


def _export_tf(model, out_path, format, tower, image_converter=None):
    """Writes the export with the TensorFlow backend (this process)."""
    import tensorflow as tf  # lazy: TensorFlow only where the TF graph is written

    parent = os.path.dirname(out_path)
    tmp = tempfile.mkdtemp(prefix=".siglip2-export-", dir=parent)
    try:
        saved_model = os.path.join(tmp, "saved_model")
        _write_saved_model(model, saved_model, tower, static_naflex=format == "litert",
                           image_converter=image_converter)
        if format == "saved_model":
            os.replace(saved_model, out_path)
        else:
            signature = "embed_images" if tower == "vision" else "embed_texts"
            converter = tf.lite.TFLiteConverter.from_saved_model(
                saved_model, signature_keys=[signature]
            )
            flatbuffer = converter.convert()
            partial = os.path.join(tmp, "model.tflite")
            with open(partial, "wb") as f:
                f.write(flatbuffer)
            os.replace(partial, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _towers(model):
    """(vision encoder or None, text encoder or None, logit head or None)."""
    if hasattr(model, "vision_encoder"):
        return model.vision_encoder, model.text_encoder, model.logit_head
    if hasattr(model, "vocabulary_size"):
        return None, model, None
    return model, None, None


def _vision_signature(vision, static_naflex):
    import tensorflow as tf  # lazy: TensorFlow only where the TF graph is written

    if hasattr(vision, "image_size"):
        height, width = vision.image_size
        return {"images": tf.TensorSpec((None, height, width, 3), tf.float32, name="images")}
    length = vision.max_num_patches if static_naflex else None
    return {
        "pixel_patches": tf.TensorSpec(
            (None, length, vision.patch_dim), tf.float32, name="pixel_patches"
        ),
        "patch_positions": tf.TensorSpec((None, length, 2), tf.int32, name="patch_positions"),
        "patch_mask": tf.TensorSpec((None, length), tf.int32, name="patch_mask"),
    }


def _decoded_image_spec(vision, converter):
    """The converter's output for one decoded image, as `tf.map_fn` needs it."""
    import tensorflow as tf  # lazy: TensorFlow only where the TF graph is written

    if hasattr(vision, "image_size"):
        height, width = vision.image_size
        if hasattr(converter, "max_num_patches"):
            raise ValueError(
                "`image_converter` is a NaFlex converter but the image tower has a fixed "
                f"resolution {(height, width)}; pass a SigLIP2ImageConverter."
            )
        if tuple(converter.image_size) != (height, width):
            raise ValueError(
                f"`image_converter` resizes to {tuple(converter.image_size)} but the image "
                f"tower takes {(height, width)}; pass the converter of the same preset."
            )
        return tf.TensorSpec((height, width, 3), tf.float32)
    if not hasattr(converter, "max_num_patches"):
        raise ValueError(
            "`image_converter` is a fixed-resolution converter but the image tower is a "
            "NaFlex tower; pass a SigLIP2NaFlexImageConverter."
        )
    n = converter.max_num_patches
    return {
        "pixel_patches": tf.TensorSpec((n, vision.patch_dim), tf.float32),
        "patch_positions": tf.TensorSpec((n, 2), tf.int32),
        "patch_mask": tf.TensorSpec((n,), tf.int32),
    }


def _add_image_bytes_endpoint(archive, vision, converter):
    """`embed_image_bytes`: encoded files -> uint8 RGB -> the converter -> embeddings."""
    import tensorflow as tf  # lazy: TensorFlow only where the TF graph is written

    spec = _decoded_image_spec(vision, converter)

    def preprocess(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.ensure_shape(image, (None, None, 3))
        out = converter(image)
        if isinstance(out, dict):
            return {k: tf.cast(out[k], spec[k].dtype) for k in spec}
        return tf.cast(out, tf.float32)

    def embed_image_bytes(image_bytes):
        inputs = tf.map_fn(preprocess, image_bytes, fn_output_signature=spec)
        if not isinstance(inputs, dict):
            inputs = {"images": inputs}
        return {"embeddings": l2_normalize(vision(inputs))}

    archive.add_endpoint(
        "embed_image_bytes",
        embed_image_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )


def _write_saved_model(model, path, tower, static_naflex=False, image_converter=None):
    """SavedModel with the signatures of the module docstring for the chosen tower(s)."""
    import tensorflow as tf  # lazy: TensorFlow only where the TF graph is written

    vision, text, logit_head = _towers(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    if tower in ("vision", "both"):

        def embed_images(inputs):
            return {"embeddings": l2_normalize(vision(inputs))}

        archive.add_endpoint(
            "embed_images",
            embed_images,
            input_signature=[_vision_signature(vision, static_naflex)],
        )
        if image_converter is not None:
            _add_image_bytes_endpoint(archive, vision, image_converter)
    if tower in ("text", "both"):

        def embed_texts(token_ids):
            return {"embeddings": l2_normalize(text({"token_ids": token_ids}))}

        length = text.max_sequence_length
        archive.add_endpoint(
            "embed_texts",
            embed_texts,
            input_signature=[tf.TensorSpec((None, length), tf.int32, name="token_ids")],
        )
    if tower == "both" and logit_head is not None:
        dim = vision.hidden_dim

        def score(image_embeddings, text_embeddings):
            # float32 logits whatever the dtype policy of the weights.
            logits, _ = logit_head.float32_logits(image_embeddings, text_embeddings)
            return {"logits": logits, "probabilities": tf.sigmoid(logits)}

        archive.add_endpoint(
            "score",
            score,
            input_signature=[
                tf.TensorSpec((None, dim), tf.float32, name="image_embeddings"),
                tf.TensorSpec((None, dim), tf.float32, name="text_embeddings"),
            ],
        )
    archive.write_out(path, verbose=False)


def _worker(args_json):
    """Entry of the TensorFlow-backend subprocess."""
    args = json.loads(args_json)
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("The export worker must run with KERAS_BACKEND=tensorflow.")
    model = _load_preset(args["preset"], args["dtype"])
    converter = args.get("image_converter")
    if converter is not None:
        import keras_siglip2  # noqa: F401  # lazy: the package root registers the converters

        converter = keras.saving.deserialize_keras_object(converter)
    _export_tf(model, args["out_path"], args["format"], args["tower"], converter)


class _CallableModule(types.ModuleType):
    """Lets `keras_siglip2.export(...)` (API.md) call `export` while
    `keras_siglip2.export` stays the module (`from keras_siglip2.export import ...`)."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
