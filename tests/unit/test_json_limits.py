"""The bounded JSON parse of params and JSON bodies: depth, number size, strings and escapes."""

from __future__ import annotations

import json
import math
import time

import pytest

from service.uploads import MAX_JSON_DEPTH, MAX_NUMBER_CHARS, JSONLimitError, parse_json


@pytest.mark.parametrize("text", [
    "[" * 10_000 + "]" * 10_000,
    '{"a": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}",
    '{"a": ' + "9" * 5000 + "}",
    '{"a": -' + "9" * MAX_NUMBER_CHARS + "}",
    '{"a": 0.' + "5" * 5000 + "}",
    '{"a": 1e' + "9" * 5000 + "}",
])
def test_over_the_limits_is_a_json_limit_error(text):
    with pytest.raises(JSONLimitError):
        parse_json(text)


@pytest.mark.parametrize("text", ["{nope", '{"a": 1,}', "[1 2]", '"\\x"'])
def test_broken_json_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_json(text)


def test_within_the_limits_parses_as_json_does():
    ok = [
        "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,  # exactly the limit
        '{"s": "' + "[{" * 5000 + '", "t": "\\"[[[\\\\"}',  # brackets and escaped quotes inside strings
        '{"n": ' + "9" * MAX_NUMBER_CHARS + ", \"f\": 1.5e-3, \"b\": [true, null]}",
    ]
    for text in ok:
        assert parse_json(text) == json.loads(text)
    assert math.isinf(parse_json('{"x": 1e999}')["x"])  # standard JSON: the models refuse it, naming the field


def test_a_large_body_of_base64_is_cheap_to_check():
    text = '{"images": ["' + "QUJD" * 5_000_000 + '"], "params": {"a": [[1]]}}'
    t0 = time.perf_counter()
    assert parse_json(text)["params"] == {"a": [[1]]}
    assert time.perf_counter() - t0 < 2.0
