"""Deprecated alias (kept for one release): the demo moved to
`keras_siglip2.training.recipes.demo`."""

from keras_siglip2.training.recipes.demo import *  # noqa: F401,F403
from keras_siglip2.training.recipes.demo import (  # noqa: F401 (the old module's names)
    DEMO_DEFAULTS,
    LOSS_TERMS,
    build_demo_backbone,
    run_demo,
)
