"""Makes keras-siglip2's classes visible under `keras_hub.models` / `keras_hub.tokenizers`
/ `keras_hub.layers`, as keras-hub's own model families are, without replacing anything
keras-hub already defines."""

import keras_hub

# keras_hub namespace -> names of ours that belong there.
_EXPORTS = {
    "models": (
        "SigLIP2Backbone",
        "SigLIP2VisionEncoder",
        "SigLIP2NaFlexVisionEncoder",
        "SigLIP2TextEncoder",
        "SigLIP2Tokenizer",
        "SigLIP2ImageConverter",
        "SigLIP2NaFlexImageConverter",
        "SigLIP2Preprocessor",
    ),
    "tokenizers": ("SigLIP2Tokenizer",),
    "layers": ("SigLIP2ImageConverter", "SigLIP2NaFlexImageConverter"),
}


def register_with_keras_hub():
    """Adds our public classes to keras_hub's namespaces; returns the names added."""
    import keras_siglip2

    added = []
    for namespace, names in _EXPORTS.items():
        module = getattr(keras_hub, namespace)
        for name in names:
            obj = getattr(keras_siglip2, name, None)
            if obj is not None and not hasattr(module, name):
                setattr(module, name, obj)
                added.append(f"keras_hub.{namespace}.{name}")
    return added
