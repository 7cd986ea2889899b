"""Tests of M4 balancing as a pipeline stage (training/data/balance_stage.py; issue 17
item 8): on a synthetic dataset biased by construction (75 % "man", 25 % "woman";
"doctor" in 60 % of the men's and 20 % of the women's captions), an unfitted balancer
given to `image_text_dataset(balancing=...)` is fitted on the data, and the examples it
delivers have attribute shares and attribute-proxy associations within a stated
tolerance of the targets. Reference values are computed by hand from the construction
(shares 0.75 / 0.25 before; association E[(s_man - 0.5) y_doctor] = 0.75 * 0.6 * 0.5 -
0.25 * 0.2 * 0.5 = 0.2 before)."""

import numpy as np
import pytest

from keras_siglip2.training.data import sources
from keras_siglip2.training.data.balancing import MomentMatchingBalancer, keyword_annotator
from keras_siglip2.training.data.pipeline import image_text_dataset

HOST = {"num_hosts": 1, "host_index": 0}
N = 800
# Sampling tolerance of the achieved statistics: the keep decisions are random draws,
# so the kept shares deviate from the fitted ones by about sqrt(p (1 - p) / kept)
# ~ 0.03 for ~300 kept examples; 0.08 is ~2.5 standard deviations (and the stream is
# deterministic, so the test is not flaky).
TOLERANCE = 0.08


def biased_examples():
    rng = np.random.default_rng(0)
    image = np.zeros((4, 4, 3), np.uint8)
    examples = []
    for i in range(N):
        man = i % 4 != 0  # 75 %
        doctor = (i % 10 < 6) if man else (i % 5 == 1)  # 60 % of men, 20 % of women
        who = "man" if man else "woman"
        examples.append({
            "image": image + rng.integers(0, 3, dtype=np.uint8),
            "caption": f"a {who} {'doctor' if doctor else 'walking'} number {i}",
            "attributes": [float(man), float(not man)],
            "proxies": [float(doctor)],
        })
    return examples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m4")
    return sources.write_csv(folder / "biased.csv", biased_examples())


def _stream_statistics(path, balancer):
    ds = image_text_dataset(path, batch_size=50, image_size=4, num_epochs=1,
                            drop_remainder=False, balancing=balancer, **HOST)
    delivered = sum(len(b["texts"]) for b in ds.as_numpy_iterator())
    return ds, delivered, ds.info.balancing_statistics()


def test_balancing_moves_first_and_second_order_statistics_to_the_target(data):
    balancer = MomentMatchingBalancer(["man", "woman"], ["doctor"],
                                      representation_tolerance=0.01,
                                      association_tolerance=0.01)
    ds, delivered, stats = _stream_statistics(data, balancer)
    assert stats["targets"] == {"man": 0.5, "woman": 0.5}  # mean observed share
    seen, kept = stats["stream"]["seen"], stats["stream"]["kept"]
    assert seen["examples"] == N
    assert seen["representation"] == {"man": 0.75, "woman": 0.25}
    assert seen["association"]["man"]["doctor"] == pytest.approx(0.2, abs=1e-6)
    assert kept["examples"] == delivered < N
    assert ds.report.as_dict()["filtered"] == {"balanced": N - delivered}
    for name in ("man", "woman"):
        assert abs(kept["representation"][name] - 0.5) < TOLERANCE
        assert abs(kept["association"][name]["doctor"]) < TOLERANCE
    # The fit on the same data met the tolerances exactly (in expectation).
    assert stats["fit"]["after"]["representation"]["man"] == pytest.approx(0.5, abs=0.011)
    assert stats["stream"]["kept_fraction"] == pytest.approx(
        stats["fit"]["after"]["kept_fraction"], abs=TOLERANCE)
    assert ds.info.as_dict()["balancing"]["targets"] == {"man": 0.5, "woman": 0.5}


def test_annotations_from_a_user_function_match_the_columns(data):
    annotate, attributes, proxies = keyword_annotator(
        {"man": ["man"], "woman": ["woman"]}, {"doctor": ["doctor"]})
    by_function = MomentMatchingBalancer(attributes, proxies, annotator=annotate)
    by_columns = MomentMatchingBalancer(attributes, proxies)
    _, n_function, a = _stream_statistics(data, by_function)
    _, n_columns, b = _stream_statistics(data, by_columns)
    assert n_function == n_columns and a["stream"] == b["stream"]


def test_missing_annotations_name_the_record(tmp_path):
    examples = biased_examples()[:8]
    for e in examples:
        e.pop("attributes")
    path = sources.write_csv(tmp_path / "partial.csv", examples)
    balancer = MomentMatchingBalancer(["man", "woman"], ["doctor"])
    with pytest.raises(Exception, match=r"partial\.csv record 1 needs 2 `attributes`"):
        image_text_dataset(path, batch_size=4, image_size=4, num_epochs=1,
                           balancing=balancer, **HOST)
    with pytest.raises(TypeError, match="`balancing` must be"):
        image_text_dataset(path, batch_size=4, image_size=4, balancing="m4", **HOST)
