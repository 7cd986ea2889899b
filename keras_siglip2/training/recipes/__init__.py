"""Recipes: the SigLIP 2 training recipe run end to end. `train` (recipes/train.py, the
library side of `siglip2 train`) with its `TrainConfig` (recipes/config.py), the
synthetic-data demo `run_demo` (recipes/demo.py, `siglip2 demo`) and the ACID comparison
(recipes/acid_comparison.py). They sit on top of the rest of `training/` (pretrainer,
callbacks, data, checkpoints) and are imported by the command line."""

from keras_siglip2.training.recipes.config import TrainConfig
from keras_siglip2.training.recipes.train import train

__all__ = ["TrainConfig", "train"]
