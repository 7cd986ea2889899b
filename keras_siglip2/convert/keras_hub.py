"""Converter from keras-hub's `SigLIPBackbone` (which keras-hub also uses for its
`siglip2_*` presets) to this package's `SigLIP2Backbone`, so users of keras-hub presets
move over without re-downloading the original checkpoints. Maps weights only; the model
is SigLIP 2's two towers (paper sec. 2)."""

import os

import keras_hub
import numpy as np

from keras_siglip2.convert.common import (
    CheckpointError,
    assign_weights,
    attention_arrays,
    build_backbone,
    dense_arrays,
    layer_norm_arrays,
    readable_preset_weights,
    require_preset_weights,
)


def _named_arrays(encoder):
    """{path inside the encoder: array}, without keras-hub's "<name>_" layer prefix."""
    prefix = f"{encoder.name}_"
    arrays = {}
    for variable in encoder.weights:
        first, _, rest = variable.path.partition("/")
        if first.startswith(prefix):
            first = first[len(prefix):]
        arrays[f"{first}/{rest}"] = np.asarray(variable.numpy(), dtype=np.float32)
    return arrays


def _attention(src, prefix):
    pairs = []
    for name in ("query", "key", "value", "attention_output"):
        kernel, bias = src[f"{prefix}/{name}/kernel"], src[f"{prefix}/{name}/bias"]
        if name == "attention_output":
            pairs.append((kernel.reshape(-1, kernel.shape[-1]), bias))
        else:
            pairs.append((kernel.reshape(kernel.shape[0], -1), bias.reshape(-1)))
    return pairs


def _blocks(src, dst, depth):
    arrays = {}
    for i in range(depth):
        s, d = f"encoder_block_{i}", f"{dst}/encoder_block_{i}"
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            arrays.update(
                layer_norm_arrays(f"{d}/{ours}", src[f"{s}/{theirs}/gamma"], src[f"{s}/{theirs}/beta"])
            )
        arrays.update(attention_arrays(d, *_attention(src, f"{s}/self_attn")))
        for fc in ("fc1", "fc2"):
            arrays.update(dense_arrays(f"{d}/mlp/{fc}", src[f"{s}/mlp/{fc}/kernel"], src[f"{s}/mlp/{fc}/bias"]))
    arrays.update(
        layer_norm_arrays(f"{dst}/encoder_norm", src["post_layer_norm/gamma"], src["post_layer_norm/beta"])
    )
    return arrays


_HANDLE_SCHEMES = ("kaggle://", "hf://", "gs://", "modelscope://")


def _load_keras_hub_preset(preset):
    """keras-hub's `SigLIPBackbone.from_preset`, with clear errors for a local
    directory that is missing, has no weights file, or has a truncated / corrupt one."""
    cls = keras_hub.models.SigLIPBackbone
    local = not preset.startswith(_HANDLE_SCHEMES) and preset not in cls.presets
    if local:
        if not os.path.isdir(preset):
            raise FileNotFoundError(
                f"keras-hub preset {preset!r} not found: expected a local keras-hub preset "
                "directory, a kaggle:// handle or a keras-hub SigLIP preset name (e.g. "
                "'siglip2_base_patch16_224')."
            )
        require_preset_weights(preset, what="keras-hub preset directory")
    with readable_preset_weights(preset, what="keras-hub preset"):
        return cls.from_preset(preset)


def _tower_configs(v, t):
    """Our (vision, text) tower configs of keras-hub's SigLIP vision / text encoders."""
    height, width = v.image_shape[0], v.image_shape[1]
    vision = {
        "type": "fixed",
        "patch_size": v.patch_size,
        "hidden_dim": v.hidden_dim,
        "num_layers": v.num_layers,
        "num_heads": v.num_heads,
        "intermediate_dim": v.intermediate_dim,
        "image_size": (height, width),
        "layer_norm_epsilon": v.layer_norm_epsilon,
    }
    text = {
        "vocabulary_size": t.vocabulary_size,
        "hidden_dim": t.hidden_dim,
        "num_layers": t.num_layers,
        "num_heads": t.num_heads,
        "intermediate_dim": t.intermediate_dim,
        "projection_dim": t.projection_dim,
        "max_sequence_length": t.max_sequence_length,
        "layer_norm_epsilon": t.layer_norm_epsilon,
    }
    return vision, text


def from_keras_hub(backbone_or_preset, dtype=None):
    """A `SigLIP2Backbone` from a keras-hub `SigLIPBackbone` object or preset
    (e.g. "siglip2_base_patch16_224" from keras-hub's own registry, a `kaggle://`
    handle or a local keras-hub preset directory)."""
    source = backbone_or_preset
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        source = _load_keras_hub_preset(source)
    if not isinstance(source, keras_hub.models.SigLIPBackbone):
        raise CheckpointError(
            f"Expected a keras_hub SigLIPBackbone or its preset; got {type(source).__name__}."
        )
    v, t = source.vision_encoder, source.text_encoder
    if t.embedding_dim != t.hidden_dim:
        raise CheckpointError(
            f"Text embedding_dim {t.embedding_dim} != hidden_dim {t.hidden_dim}: not a SigLIP 2 text tower."
        )
    vision, text = _tower_configs(v, t)
    vs, ts = _named_arrays(v), _named_arrays(t)
    try:
        stem = vs["embedding/patch_embedding/kernel"]
        arrays = {
            **dense_arrays(
                "vision_encoder/patch_embedding/dense",
                stem.reshape(-1, stem.shape[-1]),
                vs["embedding/patch_embedding/bias"],
            ),
            "vision_encoder/position_embedding/embeddings": vs[
                "embedding/position_embedding/embeddings"
            ][None],
            **_blocks(vs, "vision_encoder", v.num_layers),
            "vision_encoder/map_head/probe": np.asarray(v.head.probe.numpy(), np.float32),
            **attention_arrays(
                "vision_encoder/map_head", *_attention(vs, "head/attention"), fused=False
            ),
            **layer_norm_arrays(
                "vision_encoder/map_head/norm", vs["head/layernorm/gamma"], vs["head/layernorm/beta"]
            ),
            "text_encoder/token_embedding/embeddings": ts["embedding/token_embedding/embeddings"],
            "text_encoder/position_embedding/embeddings": ts[
                "embedding/position_embedding/embeddings"
            ][None],
            **_blocks(ts, "text_encoder", t.num_layers),
            **dense_arrays("text_encoder/head", ts["head/kernel"], ts["head/bias"]),
            "logit_head/log_temperature": np.reshape(source.siglip_head.logit_scale.numpy(), (1,)),
            "logit_head/bias": np.reshape(source.siglip_head.logit_bias.numpy(), (1,)),
        }
        for fc in ("fc1", "fc2"):
            arrays.update(
                dense_arrays(
                    f"vision_encoder/map_head/mlp/{fc}",
                    vs[f"head/mlp/{fc}/kernel"],
                    vs[f"head/mlp/{fc}/bias"],
                )
            )
    except KeyError as e:
        raise CheckpointError(f"The keras-hub SigLIPBackbone lacks variable {e}.") from e
    backbone = build_backbone(vision, text, dtype=dtype)
    assign_weights(backbone, arrays, source="keras-hub SigLIPBackbone")
    return backbone
