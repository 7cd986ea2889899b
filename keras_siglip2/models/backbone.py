"""SigLIP 2 two-tower backbone (paper sec. 2.1): an image tower (fixed resolution or
NaFlex) and a text tower joined by the sigmoid-loss logit head (learned t and b)."""

import os

import keras
from keras_hub.models import Backbone

from keras_siglip2.layers import SigLIP2LogitHead
from keras_siglip2.models.fit_defaults import FitDefaultsMixin
from keras_siglip2.models.layout_map import get_layout_map
from keras_siglip2.models.preset_files import (
    readable_preset_weights,
    require_preset_weights,
    resolve_preset_path,
)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Backbone(FitDefaultsMixin, Backbone):
    """Both towers plus the learned log-temperature `t` and bias `b`.

    Args:
        vision_encoder: `SigLIP2VisionEncoder` or `SigLIP2NaFlexVisionEncoder`.
        text_encoder: `SigLIP2TextEncoder` whose `projection_dim` equals the image
            width.
        temperature_init, bias_init: initial exp(t) and b (10 and -10 in the paper).

    Inputs: the vision encoder's inputs plus `token_ids`. Outputs
    `{"vision_logits": (B_img, B_txt), "text_logits": (B_txt, B_img)}`.

    Dtype policies (`dtype="mixed_bfloat16"`, `"mixed_float16"`, `"bfloat16"`) apply to
    every sublayer, the logit head included, as in keras-hub (its backbone harness
    passes, tests/models/test_keras_hub_harness.py). The logits are computed in float32
    inside the head for stability and returned in the compute dtype, keras-hub's
    convention; `logit_head.float32_logits(image_embeddings, text_embeddings)` gives
    them unrounded. The training losses compute them in float32 from the embeddings.

    Training as in keras-hub: `backbone.compile()` then `backbone.fit(inputs)` (no
    targets) trains with the sigmoid loss and AdamW (`fit_defaults.py`); the SigLIP 2
    recipe is `keras_siglip2.training.SigLIP2Pretrainer`.

    Example:
    ```python
    backbone = keras_siglip2.SigLIP2Backbone.from_preset("siglip2_base_patch16_224")
    out = backbone({"images": images, "token_ids": token_ids})
    probs = keras.ops.sigmoid(out["vision_logits"])
    ```
    """

    def __init__(
        self,
        vision_encoder,
        text_encoder,
        temperature_init=10.0,
        bias_init=-10.0,
        dtype=None,
        **kwargs,
    ):
        if vision_encoder.hidden_dim != text_encoder.projection_dim:
            raise ValueError(
                "The text tower must project to the image embedding width: "
                f"vision_encoder.hidden_dim={vision_encoder.hidden_dim} but "
                f"text_encoder.projection_dim={text_encoder.projection_dim}."
            )
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        # Follows the policy; computes in float32 and rounds only the output logits.
        self.logit_head = SigLIP2LogitHead(
            temperature_init, bias_init, dtype=dtype, name="logit_head"
        )

        vision_inputs = {
            name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
            for name, tensor in vision_encoder.input.items()
        }
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        vision_logits, text_logits = self.logit_head(
            vision_encoder(vision_inputs), text_encoder({"token_ids": token_ids})
        )
        super().__init__(
            inputs={**vision_inputs, "token_ids": token_ids},
            outputs={"vision_logits": vision_logits, "text_logits": text_logits},
            dtype=dtype,
            **kwargs,
        )
        self.temperature_init = temperature_init
        self.bias_init = bias_init

    def __call__(self, inputs, *args, **kwargs):
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ValueError(
                "SigLIP2Backbone takes a dict with the keys "
                f"{list(self.vision_input_names) + ['token_ids']}; got "
                f"{sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__}."
            )
        checked = {**self._vision_inputs(inputs), **self.text_encoder.check_inputs(inputs)}
        return super().__call__(checked, *args, **kwargs)

    def _vision_inputs(self, inputs):
        missing = [n for n in self.vision_input_names if n not in inputs]
        if missing:
            raise ValueError(
                f"Vision inputs {missing} are missing; expected the keys "
                f"{list(self.vision_input_names)}, got {sorted(inputs)}."
            )
        return self.vision_encoder.check_inputs({n: inputs[n] for n in self.vision_input_names})

    @property
    def vision_input_names(self):
        return tuple(self.vision_encoder.input.keys())

    @property
    def embedding_dim(self):
        return self.vision_encoder.hidden_dim

    def get_vision_embeddings(self, inputs):
        """Pooled image embeddings (B, D), not normalized. `inputs`: a dict of the
        vision inputs (extra keys are ignored) or, for the fixed tower, the images."""
        if isinstance(inputs, dict):
            inputs = self._vision_inputs(inputs)
        return self.vision_encoder(inputs)

    def get_text_embeddings(self, token_ids):
        """Pooled and projected text embeddings (B, D), not normalized."""
        if isinstance(token_ids, dict):
            token_ids = token_ids["token_ids"]
        return self.text_encoder({"token_ids": token_ids})

    @classmethod
    def get_layout_map(
        cls,
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """A `keras.distribution.LayoutMap` sharding every large variable (towers,
        heads, LocCa decoder, teacher copies) FSDP-style over the model axis; see
        `keras_siglip2.models.layout_map.get_layout_map`."""
        return get_layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a preset: a name from `keras_siglip2.list_presets()`, a local preset
        directory, or a `kaggle://` / `hf://` / `gs://` handle."""
        preset = resolve_preset_path(preset)
        if load_weights and os.path.isdir(preset):
            require_preset_weights(
                preset, hint=" Pass load_weights=False for a randomly initialized model."
            )
        with readable_preset_weights(
            preset, hint=" Convert or download the preset again."
        ):
            return super().from_preset(preset, load_weights, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vision_encoder": keras.layers.serialize(self.vision_encoder),
                "text_encoder": keras.layers.serialize(self.text_encoder),
                "temperature_init": self.temperature_init,
                "bias_init": self.bias_init,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        dtype = config.get("dtype")
        for key in ("vision_encoder", "text_encoder"):
            sub = config[key]
            if isinstance(sub, dict):
                sub = {**sub, "config": dict(sub["config"])}
                if dtype is not None:  # the towers follow the backbone's policy
                    sub["config"]["dtype"] = dtype
                config[key] = keras.layers.deserialize(sub, custom_objects=custom_objects)
        if isinstance(dtype, dict):
            config["dtype"] = keras.dtype_policies.get(dtype)
        return cls(**config)
