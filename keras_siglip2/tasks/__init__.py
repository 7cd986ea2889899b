"""What users do with SigLIP 2 (paper sec. 3): zero-shot classification with prompt
ensembling, image-text retrieval with recall@k evaluation, dense patch features with a
linear probe. Layer 3 (over models and preprocessing); the image loading and the plots
they use live in `keras_siglip2.media` (re-exported here as before)."""

from keras_siglip2.tasks.dense_features import LinearProbe, patch_features
from keras_siglip2.tasks.embedding import SigLIP2Embedder
from keras_siglip2.media.images import load_image, load_images
from keras_siglip2.media.plots import (
    patch_similarity_overlay,
    plot_classification,
    plot_retrieval_grid,
    similarity_heatmap,
)
from keras_siglip2.tasks.retrieval import SigLIP2Retriever, recall_at_k
from keras_siglip2.tasks.zero_shot import (
    DEFAULT_TEMPLATES,
    TEMPLATES,
    SigLIP2ZeroShotClassifier,
    templates_for_language,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "LinearProbe",
    "SigLIP2Embedder",
    "SigLIP2Retriever",
    "SigLIP2ZeroShotClassifier",
    "TEMPLATES",
    "load_image",
    "load_images",
    "patch_features",
    "patch_similarity_overlay",
    "plot_classification",
    "plot_retrieval_grid",
    "recall_at_k",
    "similarity_heatmap",
    "templates_for_language",
]
