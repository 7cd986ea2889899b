"""Projection head for SILC self-distillation and TIPS masked prediction (paper sec. 2.3;
the DINO head that SILC and TIPS use).

Image features (pooled (B, D), or per-patch (B, N, D)) go through an MLP
(Dense -> GELU, num_layers - 1 times, then a Dense to a small bottleneck), are
L2-normalized, and a weight-normalized Dense without bias maps them to K "prototype"
logits. The last layer's columns are divided by their norms (DINO's weight
normalization with the gain fixed at 1, `norm_last_layer=True`), so every logit is a
cosine in [-1, 1]; the temperatures of the losses turn them into sharp distributions.

The defaults (hidden 2048, bottleneck 256, 3 layers) are DINO's; DINO uses 65,536
outputs, we default to 4096, ample for the data sizes this package trains on and 16x
cheaper; pass `output_dim` to change it. Init follows DINO: truncated normal std 0.02,
zero biases. This head is a training-only part: it never enters the exported model.
"""

import keras
from keras import ops

from keras_siglip2.layers.logit_head import l2_normalize
from keras_siglip2.checks import check_positive_int


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2ProjectionHead(keras.layers.Layer):
    """DINO-style projection head, (..., input_dim) -> (..., output_dim) logits.

    Args:
        input_dim: int. Width of the features fed in (the tower width).
        hidden_dim: int. Width of the hidden MLP layers.
        bottleneck_dim: int. Width of the L2-normalized bottleneck.
        output_dim: int. Number of output logits K.
        num_layers: int >= 1. Dense layers before the bottleneck normalization
            (num_layers - 1 hidden layers with GELU, then the bottleneck Dense).

    Built at construction (its weights exist before the first call). The output is
    float32 under any dtype policy: the logits are cosines that the losses divide
    by temperatures as small as 0.04, more than bfloat16 can resolve.
    """

    def __init__(
        self,
        input_dim,
        hidden_dim=2048,
        bottleneck_dim=256,
        output_dim=4096,
        num_layers=3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("input_dim", input_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("output_dim", output_dim),
            ("num_layers", num_layers),
        ):
            check_positive_int(name, value)
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.output_dim = output_dim
        self.num_layers = num_layers
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        widths = [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        self.mlp_layers = [
            keras.layers.Dense(
                width,
                kernel_initializer=init,
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=f"mlp_{i}",
            )
            for i, width in enumerate(widths)
        ]
        self.build((None, input_dim))

    def build(self, input_shape):
        shape = (None, self.input_dim)
        for layer in self.mlp_layers:
            layer.build(shape)
            shape = (None, layer.units)
        self.last_kernel = self.add_weight(
            shape=(self.bottleneck_dim, self.output_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="last_kernel",
        )
        self.built = True

    def call(self, x):
        if x.shape[-1] is not None and x.shape[-1] != self.input_dim:
            raise ValueError(
                f"`SigLIP2ProjectionHead` expects features of width input_dim="
                f"{self.input_dim}; got shape {tuple(x.shape)}."
            )
        for i, layer in enumerate(self.mlp_layers):
            x = layer(x)
            if i < len(self.mlp_layers) - 1:
                x = keras.activations.gelu(x, approximate=False)
        x = l2_normalize(ops.cast(x, "float32"))
        kernel = ops.cast(self.last_kernel, "float32")
        kernel = kernel / ops.sqrt(ops.sum(ops.square(kernel), axis=0, keepdims=True))
        return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim,
                "output_dim": self.output_dim,
                "num_layers": self.num_layers,
            }
        )
        return config
