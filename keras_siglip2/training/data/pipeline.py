"""`image_text_dataset`: the `tf.data` input pipeline of the SigLIP 2 recipe (paper
sec. 2) for a user's own image-text data.

From TFRecord / WebDataset / CSV / JSONL sources (`sources.py`) it builds the batches
`SigLIP2Pretrainer` trains on: the image at the model resolution and the caption's
token ids (sigmoid loss, sec. 2.1), LocCa targets from captions and boxes (sec. 2.2),
SILC local crops and the TIPS patch mask (sec. 2.3), or NaFlex patches with a sequence
length drawn per batch from {128, 256, 576, 784, 1024} (sec. 2.4.2). It also offers the
paper's data-side choices (sec. 2, "training data"): a language mixture (90 % English /
10 % other languages in the paper) and a pluggable de-biasing filter step.

Order of the stages (every stage runs in the `tf.data` graph):

1. per language bucket: records of one epoch (shards in a permuted order, records
   shuffled in a buffer, both seeded by (seed, epoch)), then an end-of-epoch marker;
   cheap checks (caption empty / not UTF-8, boxes, truncated or unknown image bytes,
   missing image file), `filter_fn`; bad examples are counted in `DataReport` and
   dropped (or, `strict=True`, raise naming the shard and record);
2. the language mixture (`tf.data.Dataset.choose_from_datasets`, stateless choices);
3. resumption: the first `start_batch * batch_size` examples are skipped before decoding;
4. decoding and the views, in parallel, order kept; an image that fails to decode is
   counted and dropped like the others; the end-of-epoch marker prints the report;
5. NaFlex patchification with the batch's sequence length, batching, tokenization,
   LocCa targets, prefetch.

Determinism and resumption. The order of examples, the crops and the masks are a
function of `seed` (and of the data), so two runs with the same arguments give the same
batches. A run resumes in one of two ways:
- `start_batch=n`: the dataset starts with the (n + 1)-th batch of the run with the same
  arguments; `n` is simply the number of batches already trained on (e.g. the
  optimizer's `iterations`, times gradient-accumulation steps). Skipped examples are
  read but not decoded. This is exact unless an image that passed the byte-level checks
  failed to decode earlier in the stream (counted as `undecodable_image`): each such
  image before the resume point makes the resumed run repeat one example.
- `tf.train.Checkpoint(iterator=iterator, report=dataset.report)`: saves the exact
  position (and the shuffle buffers) of an iterator; works for TFRecord and CSV / JSONL
  sources (not `.tar` shards, which are read by Python).

This module is the public entry point and re-exports the stages it was split into:
`config` (the `DataConfig` dataclasses), `languages`, `record_checks`, `stream`
(`record_stream`), `views`, `locca_fields` (`locca_batch_fields`) and `dataset`
(`image_text_dataset`). Importing from `keras_siglip2.training.data.pipeline` keeps
working.
"""

from keras_siglip2.training.data.config import (  # noqa: F401
    KEYWORDS,
    LOCCA_OPTIONS,
    NAFLEX_SEQUENCE_LENGTHS,
    DataConfig,
    LocCaConfig,
    MixtureConfig,
    ReadConfig,
    ViewConfig,
)
from keras_siglip2.training.data.dataset import (  # noqa: F401
    EXTRA_FIELDS,
    default_host,
    image_text_dataset,
)
from keras_siglip2.training.data.languages import (  # noqa: F401
    PAPER_LANGUAGE_WEIGHTS,
    _check_language_weights,
    _normalize_language,
    language_buckets,
)
from keras_siglip2.training.data.locca_fields import locca_batch_fields  # noqa: F401
from keras_siglip2.training.data.record_checks import (  # noqa: F401
    _DESCRIPTIONS,
    FILTER_KEYS,
    _apply_filter,
    _first_problem,
    _path_exists,
    _strict_assert,
    check_record,
)
from keras_siglip2.training.data.stream import record_stream  # noqa: F401
from keras_siglip2.training.data.views import VIEWS, _check_views, _Views  # noqa: F401
