"""The NaFlex stage of a `train` run (paper sec. 2.4.2): the NaFlex variants continue
from the fixed-resolution run at 90 % of training with aspect-preserving NaFlex inputs,
a sequence length drawn per batch, and the sigmoid and LocCa losses only.

A run with `naflex_from` fits in two phases over the same files: the fixed-resolution
phase (the views of the chosen losses, up to the switch step) and the NaFlex phase (from
the switch step to the end: `training.data` NaFlex views, aspect-preserving patches
with the length drawn per batch from `naflex_lengths`; the jitted step is compiled once
per length). `NaFlexSwitch` converts the tower at the first step of the second phase;
the NaFlex dataset starts at the same batch index, so the record order runs on without
a gap or a repeat, and a run resumed after the switch restores the NaFlex tower from its
checkpoint (JAX; other backends resume within a phase only). The preset written at the
end has the NaFlex tower and a `SigLIP2NaFlexImageConverter` (patch size and match
mode of the fixed converter, sequence length the largest of `naflex_lengths`).
"""

from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter, SigLIP2Preprocessor
from keras_siglip2.training.callbacks import switch_step
from keras_siglip2.training.data.pipeline import NAFLEX_SEQUENCE_LENGTHS
from keras_siglip2.training.naflex_switch import NaFlexSwitch


def stage_lengths(config):
    """The NaFlex stage's sequence lengths: `naflex_lengths` or the paper's."""
    return tuple(config.naflex_lengths or NAFLEX_SEQUENCE_LENGTHS)


def naflex_views(decoder, lengths):
    """`image_text_dataset` view arguments of a NaFlex tower: NaFlex patches with the
    sequence length drawn per batch from `lengths`, LocCa targets with a decoder."""
    return {"views": ("naflex",), "naflex_sequence_lengths": tuple(lengths),
            "locca": decoder is not None}


def naflex_switch(config):
    """The `NaFlexSwitch` callback of the run: from `naflex_from` of the steps; the
    tower's default sequence length is the largest of the stage's lengths (the
    batches carry their own)."""
    return NaFlexSwitch(config.naflex_from, max_num_patches=max(stage_lengths(config)),
                        total_steps=config.steps)


def phase_ends(config):
    """The step at which each phase of the run ends: [steps] without a NaFlex stage,
    else [the switch step, steps]."""
    if config.naflex_from is None:
        return [config.steps]
    return [switch_step(config.naflex_from, config.steps), config.steps]


def naflex_preprocessor(preprocessor, patch_size, lengths):
    """`preprocessor` with a NaFlex image converter in place of its fixed one: the
    tower's patch size, the fixed converter's match mode, the largest stage length."""
    converter = preprocessor.image_converter
    return SigLIP2Preprocessor(
        tokenizer=preprocessor.tokenizer,
        image_converter=SigLIP2NaFlexImageConverter(
            patch_size=patch_size, max_num_patches=max(lengths),
            match=getattr(converter, "match", "big_vision")),
    )


def preset_converter(backbone, preprocessor, lengths):
    """The image converter to save with `backbone`: the preprocessor's, or, once the
    NaFlex stage has converted a fixed tower, the matching NaFlex converter."""
    converter = preprocessor.image_converter
    vision = backbone.vision_encoder
    if (isinstance(vision, SigLIP2NaFlexVisionEncoder)
            and not isinstance(converter, SigLIP2NaFlexImageConverter)):
        return naflex_preprocessor(preprocessor, vision.patch_size, lengths).image_converter
    return converter
