"""Converter from Hugging Face transformers SigLIP 2 checkpoints to `SigLIP2Backbone`:
`SiglipModel` (fixed-resolution SigLIP 2 releases, `google/siglip2-*-patchP-RES`) and
`Siglip2Model` (the NaFlex releases, `google/siglip2-*-naflex`), from a local directory
(config.json + safetensors) or a live model object. Implements no part of the paper
itself: it maps the released weights onto this package's towers (paper sec. 2)."""

import json
import math
import os

import numpy as np

from keras_siglip2.convert.common import (
    CheckpointError,
    attention_arrays,
    backbone_from_checkpoint,
    dense_arrays,
    layer_norm_arrays,
)

_SUPPORTED = ("siglip", "siglip2")


def _read_state_dict(directory):
    """{name: numpy array} from a save_pretrained directory (single or sharded
    safetensors, or pytorch_model.bin)."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    torch_bin = os.path.join(directory, "pytorch_model.bin")
    try:
        if os.path.exists(single) or os.path.exists(index):
            from safetensors.numpy import load_file  # lazy: only for .safetensors files

            if os.path.exists(index):
                with open(index) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            else:
                files = ["model.safetensors"]
            state = {}
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"Weights shard {path} listed in the index is missing.")
                state.update(load_file(path))
            return state
        if os.path.exists(torch_bin):
            import torch  # lazy: optional heavy dependency

            loaded = torch.load(torch_bin, map_location="cpu", weights_only=True)
            return {k: v.float().numpy() for k, v in loaded.items()}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"Cannot read the weights in {directory} (truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from e
    raise FileNotFoundError(
        f"No weights file in {directory}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin."
    )


def _load(path_or_model):
    """(config dict, state dict of numpy arrays) from a directory or a live model."""
    if isinstance(path_or_model, (str, os.PathLike)):
        directory = os.fspath(path_or_model)
        config_path = os.path.join(directory, "config.json")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"transformers checkpoint directory not found: {directory}")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{directory} has no config.json: not a transformers checkpoint.")
        with open(config_path) as f:
            config = json.load(f)
        _check_model_type(config)
        state = _read_state_dict(directory)
    else:
        config = path_or_model.config.to_dict()
        state = {
            k: v.detach().float().cpu().numpy() for k, v in path_or_model.state_dict().items()
        }
        _check_model_type(config)
    return config, state


def _check_model_type(config):
    model_type = config.get("model_type")
    if model_type not in _SUPPORTED:
        raise CheckpointError(
            f"Unsupported transformers model_type {model_type!r}: expected one of "
            f"{_SUPPORTED} (SiglipModel / Siglip2Model)."
        )


# transformers' defaults (`SiglipVisionConfig` / `Siglip2VisionConfig` / `Siglip*TextConfig`):
# the released config.json files were written by transformers 4.x, which leaves out every
# value equal to its default (google/siglip2-base-patch16-naflex spells out almost nothing).
_TOWER_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
HF_CONFIG_DEFAULTS = {
    "siglip": {
        "vision_config": {**_TOWER_DEFAULTS, "patch_size": 16, "image_size": 224},
        "text_config": {**_TOWER_DEFAULTS, "vocab_size": 32000, "max_position_embeddings": 64},
    },
    "siglip2": {
        "vision_config": {**_TOWER_DEFAULTS, "patch_size": 16, "num_patches": 256},
        "text_config": {**_TOWER_DEFAULTS, "vocab_size": 32000, "max_position_embeddings": 64},
    },
}


def _with_defaults(config):
    """`config` with transformers' defaults filled in for every tower value it omits."""
    defaults = HF_CONFIG_DEFAULTS[config["model_type"]]
    return {
        **config,
        **{key: {**defaults[key], **(config.get(key) or {})} for key in defaults},
    }


def infer_architecture(config, state):
    config = _with_defaults(config)
    vc, tc = config["vision_config"], config["text_config"]
    for name, sub in (("vision", vc), ("text", tc)):
        act = sub.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise CheckpointError(
                f"The {name} tower uses activation {act!r}; SigLIP 2 uses the tanh GELU."
            )
    vision = {
        "hidden_dim": vc["hidden_size"],
        "num_layers": vc["num_hidden_layers"],
        "num_heads": vc["num_attention_heads"],
        "intermediate_dim": vc["intermediate_size"],
        "patch_size": vc["patch_size"],
        "layer_norm_epsilon": vc.get("layer_norm_eps", 1e-6),
    }
    if config["model_type"] == "siglip2":
        # Siglip2Model: NaFlex. Its learned positions form a square (G, G) grid.
        grid = math.isqrt(vc["num_patches"])
        if grid * grid != vc["num_patches"]:
            raise CheckpointError(
                f"Siglip2 vision_config.num_patches={vc['num_patches']} is not a square: "
                "the NaFlex position embeddings must form a (G, G) grid."
            )
        vision.update(type="naflex", position_grid_size=grid)
    else:
        vision.update(type="fixed", image_size=vc["image_size"])
    text = {
        "vocabulary_size": tc["vocab_size"],
        "hidden_dim": tc["hidden_size"],
        "num_layers": tc["num_hidden_layers"],
        "num_heads": tc["num_attention_heads"],
        "intermediate_dim": tc["intermediate_size"],
        "projection_dim": tc.get("projection_size") or tc["hidden_size"],
        "max_sequence_length": tc["max_position_embeddings"],
        "layer_norm_epsilon": tc.get("layer_norm_eps", 1e-6),
    }
    return {"vision": vision, "text": text}


def _linear(state, name):
    """torch Linear (out, in) weight -> Keras (in, out) kernel, and its bias."""
    return state[f"{name}.weight"].T, state[f"{name}.bias"]


def _linear_ln(state, name):
    """torch LayerNorm weight and bias (= gamma, beta)."""
    return state[f"{name}.weight"], state[f"{name}.bias"]


def _encoder_arrays(state, src, dst, depth, final_norm):
    arrays = {}
    for i in range(depth):
        s, d = f"{src}.encoder.layers.{i}", f"{dst}/encoder_block_{i}"
        arrays.update(layer_norm_arrays(f"{d}/norm1", *_linear_ln(state, f"{s}.layer_norm1")))
        arrays.update(layer_norm_arrays(f"{d}/norm2", *_linear_ln(state, f"{s}.layer_norm2")))
        attn = [_linear(state, f"{s}.self_attn.{p}_proj") for p in ("q", "k", "v", "out")]
        arrays.update(attention_arrays(d, *attn))
        arrays.update(dense_arrays(f"{d}/mlp/fc1", *_linear(state, f"{s}.mlp.fc1")))
        arrays.update(dense_arrays(f"{d}/mlp/fc2", *_linear(state, f"{s}.mlp.fc2")))
    arrays.update(layer_norm_arrays(f"{dst}/encoder_norm", *_linear_ln(state, f"{src}.{final_norm}")))
    return arrays


def transformers_arrays(state, arch):
    """{our variable path: array} for a whole backbone from a transformers state dict."""
    vision, text = arch["vision"], arch["text"]
    d = vision["hidden_dim"]
    v = "vision_model"
    stem = state[f"{v}.embeddings.patch_embedding.weight"]
    if vision["type"] == "naflex":  # Linear (d, p*p*3), patches in (py, px, c) order
        kernel = stem.T
        grid = vision["position_grid_size"]
        position = {
            "vision_encoder/position_grid/grid": state[
                f"{v}.embeddings.position_embedding.weight"
            ].reshape(grid, grid, d)
        }
    else:  # Conv2d (d, 3, p, p) -> (p, p, 3, d) -> (p*p*3, d)
        kernel = stem.transpose(2, 3, 1, 0).reshape(-1, d)
        position = {
            "vision_encoder/position_embedding/embeddings": state[
                f"{v}.embeddings.position_embedding.weight"
            ][None]
        }
    arrays = {
        **dense_arrays(
            "vision_encoder/patch_embedding/dense",
            kernel,
            state[f"{v}.embeddings.patch_embedding.bias"],
        ),
        **position,
        **_encoder_arrays(state, v, "vision_encoder", vision["num_layers"], "post_layernorm"),
    }
    h = f"{v}.head"
    in_w, in_b = state[f"{h}.attention.in_proj_weight"], state[f"{h}.attention.in_proj_bias"]
    qkv = [(in_w[i * d:(i + 1) * d].T, in_b[i * d:(i + 1) * d]) for i in range(3)]
    out = _linear(state, f"{h}.attention.out_proj")
    arrays["vision_encoder/map_head/probe"] = state[f"{h}.probe"]
    arrays.update(attention_arrays("vision_encoder/map_head", *qkv, out, fused=False))
    arrays.update(layer_norm_arrays("vision_encoder/map_head/norm", *_linear_ln(state, f"{h}.layernorm")))
    arrays.update(dense_arrays("vision_encoder/map_head/mlp/fc1", *_linear(state, f"{h}.mlp.fc1")))
    arrays.update(dense_arrays("vision_encoder/map_head/mlp/fc2", *_linear(state, f"{h}.mlp.fc2")))

    t = "text_model"
    arrays["text_encoder/token_embedding/embeddings"] = state[f"{t}.embeddings.token_embedding.weight"]
    arrays["text_encoder/position_embedding/embeddings"] = state[
        f"{t}.embeddings.position_embedding.weight"
    ][None]
    arrays.update(_encoder_arrays(state, t, "text_encoder", text["num_layers"], "final_layer_norm"))
    arrays.update(dense_arrays("text_encoder/head", *_linear(state, f"{t}.head")))
    arrays["logit_head/log_temperature"] = np.reshape(state["logit_scale"], (1,))
    arrays["logit_head/bias"] = np.reshape(state["logit_bias"], (1,))
    return arrays


def from_transformers(path_or_model, dtype=None):
    """A `SigLIP2Backbone` from a Hugging Face `SiglipModel` / `Siglip2Model`.

    Args:
        path_or_model: a `save_pretrained` directory (config.json + safetensors), e.g.
            a local snapshot of `google/siglip2-base-patch16-224`, or a live model.
        dtype: optional dtype policy of the returned backbone.
    """
    config, state = _load(path_or_model)
    state = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    arch = infer_architecture(config, state)
    return backbone_from_checkpoint(
        lambda: (arch, transformers_arrays(state, arch)), "transformers checkpoint", dtype
    )
