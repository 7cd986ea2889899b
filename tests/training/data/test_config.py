"""Tests of the data configuration (training/data/config.py): `DataConfig` round-trips
through plain JSON, the flat keyword arguments of `image_text_dataset` map onto its
sections, a `config=` gives the same batches as the same keywords, and the old import
paths (`pipeline`, `sources`) still name the split modules' objects."""

import json

import numpy as np
import pytest

from keras_siglip2.training.data import config as config_module
from keras_siglip2.training.data import dataset, readers, writers
from keras_siglip2.training.data.config import (
    DataConfig,
    LocCaConfig,
    ReadConfig,
    ViewConfig,
)
from tests.training.data.test_sources import SIZE, make_examples


def test_round_trip_through_json():
    config = DataConfig(
        read=ReadConfig(seed=3, num_epochs=2, extra_fields=("texts", "boxes")),
        views=ViewConfig(views=("image", "local"), image_size=(16, 24), num_local_crops=4,
                         local_crop_scale=(0.1, 0.3)),
        locca=LocCaConfig(enabled=True, num_bins=16, task_weights=(1.0, 0.5, 0.0)),
    )
    config.mixture.language_weights = {"en": 0.9, "other": 0.1}
    text = json.dumps(config.to_dict())
    back = DataConfig.from_dict(json.loads(text))
    assert back == config
    assert back.views.image_size == (16, 24) and back.read.extra_fields == ("texts", "boxes")
    with pytest.raises(ValueError, match="no section"):
        DataConfig.from_dict({"optimizer": {}})
    with pytest.raises(ValueError, match=r"`ViewConfig` has no field\(s\) \['crops'\]"):
        DataConfig.from_dict({"views": {"crops": 3}})


def test_flat_keywords_map_onto_sections():
    config = DataConfig.from_keywords(
        views=("image", "masked"), patch_size=4, seed=7, locca=True,
        locca_options={"num_bins": 8}, default_language="en", strict=True)
    assert config.views.views == ("image", "masked") and config.views.patch_size == 4
    assert config.read.seed == 7 and config.read.strict is True
    assert config.locca.enabled and config.locca.num_bins == 8
    assert config.mixture.default_language == "en"
    # Keywords override a given config; the given one is not modified.
    base = DataConfig(read=ReadConfig(seed=1, num_epochs=3))
    over = DataConfig.from_keywords(base, seed=2)
    assert (over.read.seed, over.read.num_epochs, base.read.seed) == (2, 3, 1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        DataConfig.from_keywords(batchsize=3)
    with pytest.raises(TypeError, match="`config` must be a DataConfig"):
        DataConfig.coerce([1, 2])


def test_config_argument_gives_the_keyword_batches(tmp_path):
    path = writers.write_tfrecord_shards(tmp_path / "c", make_examples(8, seed=2), 2)
    keywords = dict(image_size=SIZE, views=("image", "local"), num_local_crops=2,
                    local_crop_size=4, num_epochs=1, seed=4, num_hosts=1, host_index=0)
    a = list(dataset.image_text_dataset(path, batch_size=4, **keywords).as_numpy_iterator())
    config = DataConfig.from_keywords(**keywords)
    ds = dataset.image_text_dataset(path, batch_size=4, config=config.to_dict())
    b = list(ds.as_numpy_iterator())
    assert ds.config == config
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_old_import_paths_re_export():
    from keras_siglip2.training.data import pipeline, sources

    assert pipeline.image_text_dataset is dataset.image_text_dataset
    assert pipeline.NAFLEX_SEQUENCE_LENGTHS is config_module.NAFLEX_SEQUENCE_LENGTHS
    assert pipeline.DataConfig is DataConfig
    assert sources.open_source is readers.open_source
    assert sources.write_csv is writers.write_csv
    assert sources.TFRecordSource is readers.TFRecordSource
