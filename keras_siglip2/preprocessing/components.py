"""Preset components saved on their own (keras-hub's `save_to_preset` of a tokenizer or
an image converter without a backbone): reading their config file and rebuilding the
object. Shared by the tokenizer, the image converters and the preprocessor.

keras-hub's loaders require a `config.json` (a saved backbone) in every preset; these
helpers let a component saved on its own (a directory with only e.g. `tokenizer.json` +
assets) load back through the same `from_preset` call."""

import json
import os

import keras


def standalone_component_config(preset, config_file):
    """The parsed `config_file` when `preset` is a local directory holding it but no
    `config.json` (a component saved without a backbone); otherwise None."""
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str) or "://" in preset:
        return None
    local = os.path.expanduser(preset)
    if not os.path.isdir(local) or os.path.exists(os.path.join(local, "config.json")):
        return None
    path = os.path.join(local, config_file)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def deserialize_component(cls, config, preset, config_file, **kwargs):
    """Builds the object described by a saved `config` (with `kwargs` overriding its
    config entries) and checks that it is a `cls`."""
    config = dict(config)
    config["config"] = {**config.get("config", {}), **kwargs}
    obj = keras.saving.deserialize_keras_object(config)
    if not isinstance(obj, cls):
        raise ValueError(
            f"{config_file} in preset {preset!r} describes a "
            f"{type(obj).__name__}, not a {cls.__name__}."
        )
    return obj
