"""keras-hub's own backbone harness (`keras_hub.src.tests.test_case.TestCase`) on
`SigLIP2Backbone` with both image towers, called as keras-hub's CLIP / SigLIP backbone
tests call it: `run_backbone_test` (config and serialization round trips, eager call,
compiled `predict` on tensors and on a `tf.data` dataset, the class-name check, the
mixed_float16 / mixed_bfloat16 / bfloat16 dtype checks of outputs, output specs,
variables and every sublayer, int8 / float8 quantization) and `run_model_saving_test`
(`.keras` save and load, outputs equal within 1e-6)."""

import keras
import numpy as np
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_siglip2 import SigLIP2Backbone
from keras_siglip2.convert.common import build_backbone

TEXT = dict(vocabulary_size=50, hidden_dim=32, num_layers=1, num_heads=2,
            intermediate_dim=64, projection_dim=32, max_sequence_length=8)
FIXED = dict(type="fixed", patch_size=8, hidden_dim=32, num_layers=1, num_heads=2,
             intermediate_dim=64, image_size=16)
NAFLEX = dict(type="naflex", patch_size=8, hidden_dim=32, num_layers=1, num_heads=2,
              intermediate_dim=64)


def _naflex_inputs(rng):
    """Two images of 2 x 3 patches, padded to 8 patches."""
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(3), indexing="ij"), -1).reshape(-1, 2)
    positions = np.concatenate([grid, np.zeros((2, 2), int)]).astype("int32")
    return {
        "pixel_patches": rng.uniform(-1, 1, (2, 8, 8 * 8 * 3)).astype("float32"),
        "patch_positions": np.stack([positions, positions]),
        "patch_mask": np.array([[1] * 6 + [0] * 2] * 2, "int32"),
    }


class SigLIP2BackboneHarnessTest(TestCase):
    def _setup(self, vision):
        keras.utils.set_random_seed(0)
        backbone = build_backbone(vision, TEXT)
        rng = np.random.RandomState(0)
        if vision["type"] == "naflex":
            x = _naflex_inputs(rng)
        else:
            x = {"images": rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")}
        x["token_ids"] = rng.randint(0, TEXT["vocabulary_size"], (2, 8)).astype("int32")
        # Backend tensors, as keras-hub's own tests pass (`ops.ones(...)`).
        self.input_data = {k: ops.convert_to_tensor(v) for k, v in x.items()}
        self.init_kwargs = {
            "vision_encoder": backbone.vision_encoder,
            "text_encoder": backbone.text_encoder,
        }

    def _backbone_test(self, vision):
        self._setup(vision)
        self.run_backbone_test(
            cls=SigLIP2Backbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
            expected_output_shape={"vision_logits": (2, 2), "text_logits": (2, 2)},
        )

    def _saving_test(self, vision):
        self._setup(vision)
        self.run_model_saving_test(
            cls=SigLIP2Backbone, init_kwargs=self.init_kwargs, input_data=self.input_data
        )

    def test_backbone_basics_fixed(self):
        self._backbone_test(FIXED)

    def test_backbone_basics_naflex(self):
        self._backbone_test(NAFLEX)

    def test_saved_model_fixed(self):
        self._saving_test(FIXED)

    def test_saved_model_naflex(self):
        self._saving_test(NAFLEX)
