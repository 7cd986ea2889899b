"""keras-siglip2: SigLIP 2 (arXiv 2502.14786) for Keras 3.

Importing this package registers every class with Keras serialization and adds the
model classes to `keras_hub.models` (never replacing a name keras-hub defines), so
`keras_hub.models.SigLIP2Backbone.from_preset(...)` works.
"""

from keras_siglip2 import console as _console

__version__ = "0.1.0"

# The `siglip2` command imports the frameworks with their native start-up logs dropped
# (see keras_siglip2/console.py); a plain `import keras_siglip2` is unaffected.
_QUIET = _console.is_quiet_command_line()
if _QUIET:
    _console.quiet_environment()
with _console.native_stderr_silenced(_QUIET):
    from keras_siglip2 import convert
    from keras_siglip2 import export  # a module that is also callable: keras_siglip2.export(...)
    from keras_siglip2 import layers
    from keras_siglip2 import models
    from keras_siglip2 import preprocessing
    from keras_siglip2.models import (
        SigLIP2Backbone,
        SigLIP2NaFlexVisionEncoder,
        SigLIP2TextEncoder,
        SigLIP2VisionEncoder,
    )
    from keras_siglip2.preprocessing import (
        SigLIP2ImageConverter,
        SigLIP2NaFlexImageConverter,
        SigLIP2Preprocessor,
        SigLIP2Tokenizer,
    )
    from keras_siglip2.presets import list_presets
    from keras_siglip2 import tasks
    from keras_siglip2.tasks import (
        LinearProbe,
        SigLIP2Retriever,
        SigLIP2ZeroShotClassifier,
        patch_features,
    )
    from keras_siglip2 import training
    from keras_siglip2.training import (
        LossCurriculum,
        ResolutionAdaptation,
        SigLIP2Pretrainer,
        SigLIPLoss,
    )
    from keras_siglip2.registration import register_with_keras_hub


    register_with_keras_hub()
if _QUIET:
    _console.silence_absl()
