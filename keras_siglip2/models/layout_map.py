"""Which SigLIP 2 variables are sharded over a device mesh's model axis, and how
(paper sec. 2: the towers are trained with FSDP-style parameter sharding on TPU pods),
as keras-hub backbones give it: `SigLIP2Backbone.get_layout_map(device_mesh)` returns a
`keras.distribution.LayoutMap`. The rules are knowledge of the model's variables, so
they live with the models; meshes and distributions are `keras_siglip2.distribution`.
"""

import keras

DATA_AXIS = "batch"
MODEL_AXIS = "model"

# Path patterns (matched with re.fullmatch against `variable.path`) and the sharding of
# each variable, with "model" standing for the model axis. Every pattern accepts any
# prefix, so the same rules shard a teacher copy (`teacher/vision_encoder/...`) or the
# LocCa decoder (`locca_decoder/decoder_block_0/...`). The patterns are mutually
# exclusive (keras' LayoutMap refuses a path matching two of them).
_ANY = r"(?:.*/)?"
LAYOUT_RULES = (
    # Embedding tables (vocabulary, d): over d, whatever the vocabulary size.
    (_ANY + r"token_embedding/embeddings", (None, "model")),
    # Learned position embeddings (1, N, d) and the NaFlex grid (G, G, d): over d.
    (_ANY + r"position_embedding/embeddings", (None, None, "model")),
    (_ANY + r"position_grid/grid", (None, None, "model")),
    # Patch stem (p * p * 3, d): over d (p * p * 3 = 588 for /14 does not split).
    (_ANY + r"patch_embedding/dense/kernel", (None, "model")),
    # Attention (self_attention, cross_attention, MAP: any layer named *attention):
    # the projections into the heads over their output, the output projection over
    # its input.
    (_ANY + r"[^/]*attention/(?:qkv|query|key|value|key_value)/kernel", (None, "model")),
    (_ANY + r"[^/]*attention/out/kernel", ("model", None)),
    # MLP blocks (encoders, MAP head, decoder): d -> mlp and mlp -> d, over mlp.
    (_ANY + r"mlp/fc1/kernel", (None, "model")),
    (_ANY + r"mlp/fc2/kernel", ("model", None)),
    # MAP head probe (1, 1, d).
    (_ANY + r"map_head/probe", (None, None, "model")),
    # Text projection head (d_text, d).
    (_ANY + r"text_encoder/head/kernel", (None, "model")),
    # LocCa decoder: image-token projection (d_image, d) and the output projection
    # (d, vocabulary) over the vocabulary (its (B, L, V) logits come out sharded).
    (_ANY + r"locca_decoder/image_projection/kernel", (None, "model")),
    (_ANY + r"locca_decoder/logits/kernel", (None, "model")),
    # SILC / TIPS projection heads (student and teacher, any layer named *_head): the
    # MLP Dense kernels mlp_0, mlp_1, ... and the weight-normalized prototype kernel
    # (bottleneck, K), whose column norms stay local when sharded over K.
    (_ANY + r"[^/]*_head/mlp_\d+/kernel", (None, "model")),
    (_ANY + r"[^/]*_head/last_kernel", (None, "model")),
)


def _check_axis_names(device_mesh, **names):
    axes = list(device_mesh.axis_names)
    for argument, name in names.items():
        if name not in axes:
            raise ValueError(
                f"`{argument}`={name!r} is not an axis of the device mesh; its axes are "
                f"{axes} (shape {tuple(device_mesh.shape)}). Build the mesh with "
                f"`make_mesh(\"{DATA_AXIS}=N,{MODEL_AXIS}=M\")` or pass the axis names "
                "it uses."
            )


def layout_rules(model_parallel_dim_name=MODEL_AXIS):
    """[(path regex, sharding spec)] with the model axis renamed."""
    return [
        (pattern, tuple(model_parallel_dim_name if a == "model" else a for a in spec))
        for pattern, spec in LAYOUT_RULES
    ]


def get_layout_map(
    device_mesh,
    model_parallel_dim_name=MODEL_AXIS,
    data_parallel_dim_name=DATA_AXIS,
):
    """A `keras.distribution.LayoutMap` sharding every large SigLIP 2 variable over the
    model axis (see `LAYOUT_RULES`); variables it does not name are replicated.

    Args:
        device_mesh: `keras.distribution.DeviceMesh` holding both axes.
        model_parallel_dim_name: the axis the parameters are sharded over.
        data_parallel_dim_name: the axis the batch is split over (checked to exist;
            the variables are not sharded over it).
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`device_mesh` must be a keras.distribution.DeviceMesh (see "
            f"`keras_siglip2.distribution.make_mesh`); got {type(device_mesh).__name__}."
        )
    _check_axis_names(
        device_mesh,
        model_parallel_dim_name=model_parallel_dim_name,
        data_parallel_dim_name=data_parallel_dim_name,
    )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, spec in layout_rules(model_parallel_dim_name):
        layout_map[pattern] = spec
    return layout_map
