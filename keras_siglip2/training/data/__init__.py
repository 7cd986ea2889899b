"""Training data for the SigLIP 2 recipe (paper sec. 2): image-text sources and tf.data
pipelines, multi-view augmentation, LocCa targets, filters, M4 data balancing and the
synthetic demo data.

Submodules are imported on use (they need TensorFlow): `pipeline.image_text_dataset`,
`locca_targets.make_locca_targets`, `synthetic.synthetic_dataset`, ... One module per
stage: files -> readers -> records / record_checks -> stream -> views -> dataset
(config: its `DataConfig`; info: the `dataset.info` it returns); writers for the
formats; guides/data.md documents the columns.
"""

_LAZY = {
    "image_text_dataset": "pipeline",
    "make_locca_targets": "locca_targets",
    "synthetic_dataset": "synthetic",
    "heldout_split": "synthetic",
    "train_tokenizer": "synthetic",
    "generate_examples": "synthetic",
    "DataConfig": "config",
    "DatasetInfo": "info",
    "MomentMatchingBalancer": "balancing",
    "keyword_annotator": "balancing",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib  # lazy: the submodules need TensorFlow, loaded on first use

        module = importlib.import_module(f"keras_siglip2.training.data.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'keras_siglip2.training.data' has no attribute {name!r}")
