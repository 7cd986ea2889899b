"""Transformer MLP block (Dense -> GELU(tanh) -> Dense) of the SigLIP 2 towers, MAP head
and LocCa decoder (paper sec. 2; big_vision `MlpBlock`)."""

import keras

from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.initializers import dense_kernel_init


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2MLP(ConfigAttributes, keras.layers.Layer):
    """Two Dense layers with the tanh-approximated GELU between them."""

    CONFIG_KEYS = ("hidden_dim", "intermediate_dim")

    def __init__(self, hidden_dim, intermediate_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.fc1 = keras.layers.Dense(
            intermediate_dim,
            kernel_initializer=dense_kernel_init(),
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="fc1",
        )
        self.fc2 = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=dense_kernel_init(),
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="fc2",
        )

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, x):
        x = self.fc1(x)
        x = keras.activations.gelu(x, approximate=True)
        return self.fc2(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)
