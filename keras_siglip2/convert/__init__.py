"""Checkpoint converters: big_vision `.npz`, Hugging Face transformers and keras-hub
SigLIP presets to `SigLIP2Backbone` / preset directories."""

from keras_siglip2.convert.big_vision import from_big_vision
from keras_siglip2.convert.keras_hub import from_keras_hub
from keras_siglip2.convert.transformers import from_transformers
from keras_siglip2.convert.common import CheckpointError, save_preset
