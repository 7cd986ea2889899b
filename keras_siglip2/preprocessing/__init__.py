"""SigLIP 2 preprocessing (paper sec. 2): the Gemma SentencePiece tokenizer with
lowercasing and sticky EOS, the fixed-resolution image converter, the NaFlex image
converter (sec. 2.4.2) and the preprocessor that pairs a tokenizer with a converter."""

from keras_siglip2.preprocessing.image_converter import SigLIP2ImageConverter
from keras_siglip2.preprocessing.naflex_image_converter import SigLIP2NaFlexImageConverter
from keras_siglip2.preprocessing.preprocessor import SigLIP2Preprocessor
from keras_siglip2.preprocessing.tokenizer import SigLIP2Tokenizer

__all__ = [
    "SigLIP2Tokenizer",
    "SigLIP2ImageConverter",
    "SigLIP2NaFlexImageConverter",
    "SigLIP2Preprocessor",
]
