"""Keys and values as MLflow takes them: nothing renamed lands on another's name, nothing
cut goes unsaid."""

from __future__ import annotations

import logging

from cifar_exp.tracking.keys import MAX_TAG_VALUE, cut, rounded, valid_keys


def test_keys_that_collide_after_renaming_stay_apart_for_the_whole_run(caplog):
    """Classes a+b and a_b: a_b keeps its name, a+b takes a suffix, every epoch the same."""
    with caplog.at_level(logging.WARNING, logger="cifar_exp"):
        first = valid_keys({"test/acc_class/x+y": 0.1, "test/acc_class/x_y": 0.9}, "metric")
        again = valid_keys({"test/acc_class/x+y": 0.2, "test/acc_class/x_y": 0.8}, "metric")
    assert first == {"test/acc_class/x_y": 0.9, "test/acc_class/x_y_2": 0.1}
    assert again == {"test/acc_class/x_y": 0.8, "test/acc_class/x_y_2": 0.2}
    [line] = [r.getMessage() for r in caplog.records]
    assert "'test/acc_class/x+y'" in line and "'test/acc_class/x_y_2'" in line


def test_tags_that_collide_after_renaming_keep_both_values():
    tags = valid_keys({"p+q": "v1", "p_q": "v2", "p/q": "v3"}, "tag")
    assert sorted(tags.values()) == ["v1", "v2", "v3"] and tags["p_q"] == "v2"


def test_a_value_longer_than_mlflow_takes_is_cut_with_a_line(caplog):
    with caplog.at_level(logging.WARNING, logger="cifar_exp"):
        out = cut({"long_note": "x" * 9000, "short": 5}, MAX_TAG_VALUE, "tag")
        cut({"long_note": "x" * 9000}, MAX_TAG_VALUE, "tag")
    assert len(out["long_note"]) == 8000 and out["short"] == "5"
    [line] = [r.getMessage() for r in caplog.records]
    assert "long_note is 9000 characters; MLflow takes 8000" in line


def test_a_metric_is_rounded_the_same_whatever_its_name():
    assert rounded(0.123456789) == 0.1234568 and rounded(1234.56789) == 1234.568
