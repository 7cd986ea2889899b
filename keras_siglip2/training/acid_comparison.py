"""Deprecated alias (kept for one release): the ACID comparison moved to
`keras_siglip2.training.recipes.acid_comparison`."""

from keras_siglip2.training.recipes.acid_comparison import *  # noqa: F401,F403
from keras_siglip2.training.recipes.acid_comparison import (  # noqa: F401
    corrupt_captions,
    run_acid_comparison,
)
