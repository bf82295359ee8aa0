"""Event patterns, table-driven from the behaviour AWS documents (EventBridge user guide,
aws/event-ruler README): every operator with matching and non-matching events."""

from __future__ import annotations

from typing import Any

import pytest

from vendwatch.route.pattern import PatternError, compile_pattern

# the EC2 example event of the event-ruler README, extended with arrays, nulls and nesting
EVENT: dict[str, Any] = {
    "version": "0",
    "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "012345679012",
    "time": "2017-10-02T16:24:49Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
    "detail": {
        "c-count": 5,
        "d-count": 3,
        "x-limit": 301.8,
        "source-ip": "10.0.0.33",
        "instance-id": "i-000000aaaaaa00000",
        "state": "running",
        "empty": "",
        "nothing": None,
        "flag": True,
        "tags": ["prod", "eu"],
        "nested": {"c1": 100},
        "employees": [{"first": "John", "last": "Doe"}, {"first": "Anna", "last": "Smith"}],
        "path": "dir/file.png",
        "star": "a*b",
    },
}

CASES: list[tuple[str, dict[str, Any], bool]] = [
    # exact values: strings, numbers, booleans, null, empty string; arrays: any element
    ("exact string", {"source": ["aws.ec2"]}, True),
    ("exact string, one of several", {"detail": {"state": ["initializing", "running"]}}, True),
    ("exact string mismatch", {"source": ["aws.s3"]}, False),
    ("exact is case-sensitive", {"source": ["AWS.EC2"]}, False),
    ("exact number", {"detail": {"c-count": [5]}}, True),
    ("exact number, float form", {"detail": {"c-count": [5.0]}}, True),
    ("number does not match its string", {"detail": {"c-count": ["5"]}}, False),
    ("string does not match a number", {"detail": {"state": [5]}}, False),
    ("boolean", {"detail": {"flag": [True]}}, True),
    ("boolean mismatch", {"detail": {"flag": [False]}}, False),
    ("null matches null", {"detail": {"nothing": [None]}}, True),
    ("null does not match empty string", {"detail": {"empty": [None]}}, False),
    ("empty string matches empty string", {"detail": {"empty": [""]}}, True),
    ("empty string does not match null", {"detail": {"nothing": [""]}}, False),
    ("array field: intersection", {"detail": {"tags": ["eu", "us"]}}, True),
    ("array field: no intersection", {"detail": {"tags": ["us"]}}, False),
    ("resources array", {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"]}, True),
    ("missing field never matches a value", {"detail": {"absent": ["x"]}}, False),
    ("all fields must match (AND)", {"source": ["aws.ec2"], "detail": {"state": ["stopped"]}}, False),
    # prefix / suffix (plain and equals-ignore-case)
    ("prefix", {"time": [{"prefix": "2017-10-02"}]}, True),
    ("prefix mismatch", {"time": [{"prefix": "2018"}]}, False),
    ("prefix only on strings", {"detail": {"c-count": [{"prefix": "5"}]}}, False),
    ("prefix ignore case", {"source": [{"prefix": {"equals-ignore-case": "AWS."}}]}, True),
    ("prefix ignore case mismatch", {"source": [{"prefix": {"equals-ignore-case": "GCP."}}]}, False),
    ("suffix", {"source": [{"suffix": "ec2"}]}, True),
    ("suffix mismatch", {"source": [{"suffix": "s3"}]}, False),
    ("suffix ignore case", {"detail": {"path": [{"suffix": {"equals-ignore-case": ".PNG"}}]}}, True),
    ("suffix is case-sensitive by default", {"detail": {"path": [{"suffix": ".PNG"}]}}, False),
    # equals-ignore-case
    ("equals-ignore-case", {"source": [{"equals-ignore-case": "AWS.EC2"}]}, True),
    ("equals-ignore-case mismatch", {"source": [{"equals-ignore-case": "aws.ec"}]}, False),
    # wildcard
    ("wildcard", {"detail": {"path": [{"wildcard": "dir/*.png"}]}}, True),
    ("wildcard several stars", {"detail-type": [{"wildcard": "EC2*State*Notification"}]}, True),
    ("wildcard mismatch", {"detail": {"path": [{"wildcard": "dir/*.jpg"}]}}, False),
    ("wildcard must match whole value", {"detail": {"path": [{"wildcard": "dir/*"}]}}, True),
    ("wildcard anchored at start", {"detail": {"path": [{"wildcard": "file*"}]}}, False),
    ("wildcard escaped star is literal", {"detail": {"star": [{"wildcard": "a\\*b"}]}}, True),
    ("wildcard escaped star mismatch", {"detail": {"path": [{"wildcard": "dir/\\*.png"}]}}, False),
    # anything-but
    ("anything-but string", {"detail": {"state": [{"anything-but": "initializing"}]}}, True),
    ("anything-but string excluded", {"detail": {"state": [{"anything-but": "running"}]}}, False),
    ("anything-but list", {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}, True),
    ("anything-but list excluded", {"detail": {"state": [{"anything-but": ["stopped", "running"]}]}}, False),
    ("anything-but number", {"detail": {"x-limit": [{"anything-but": 123}]}}, True),
    ("anything-but number list excluded", {"detail": {"x-limit": [{"anything-but": [100, 301.8]}]}}, False),
    ("anything-but does not match a missing field", {"detail": {"absent": [{"anything-but": "x"}]}}, False),
    ("anything-but prefix", {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}, True),
    ("anything-but prefix excluded", {"detail": {"state": [{"anything-but": {"prefix": "run"}}]}}, False),
    ("anything-but suffix", {"source": [{"anything-but": {"suffix": "s3"}}]}, True),
    ("anything-but suffix excluded", {"source": [{"anything-but": {"suffix": "ec2"}}]}, False),
    ("anything-but wildcard", {"detail": {"path": [{"anything-but": {"wildcard": "*/lib/*"}}]}}, True),
    ("anything-but wildcard excluded", {"detail": {"path": [{"anything-but": {"wildcard": "dir/*"}}]}}, False),
    ("anything-but equals-ignore-case",
     {"detail": {"state": [{"anything-but": {"equals-ignore-case": ["STOPPED"]}}]}}, True),
    ("anything-but equals-ignore-case excluded",
     {"detail": {"state": [{"anything-but": {"equals-ignore-case": ["RUNNING", "x"]}}]}}, False),
    ("anything-but on an array: any element outside", {"detail": {"tags": [{"anything-but": "prod"}]}}, True),
    ("anything-but on an array: all excluded", {"detail": {"tags": [{"anything-but": ["prod", "eu"]}]}}, False),
    # numeric
    ("numeric range", {"detail": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}}, True),
    ("numeric range, upper bound exclusive", {"detail": {"c-count": [{"numeric": [">", 0, "<", 5]}]}}, False),
    ("numeric less than", {"detail": {"d-count": [{"numeric": ["<", 10]}]}}, True),
    ("numeric greater or equal", {"detail": {"d-count": [{"numeric": [">=", 3]}]}}, True),
    ("numeric greater mismatch", {"detail": {"d-count": [{"numeric": [">", 3]}]}}, False),
    ("numeric equals (exponent form)", {"detail": {"x-limit": [{"numeric": ["=", 3.018e2]}]}}, True),
    ("numeric only on numbers", {"detail": {"state": [{"numeric": [">", 0]}]}}, False),
    ("numeric on a missing field", {"detail": {"absent": [{"numeric": [">", 0]}]}}, False),
    # exists (leaves only)
    ("exists true", {"detail": {"c-count": [{"exists": True}]}}, True),
    ("exists true, missing", {"detail": {"absent": [{"exists": True}]}}, False),
    ("exists false, missing", {"detail": {"absent": [{"exists": False}]}}, True),
    ("exists false, present", {"detail": {"c-count": [{"exists": False}]}}, False),
    ("exists false on an object (not a leaf)", {"detail": {"nested": [{"exists": False}]}}, True),
    ("exists true on an object (not a leaf)", {"detail": {"nested": [{"exists": True}]}}, False),
    ("exists true on null (a value)", {"detail": {"nothing": [{"exists": True}]}}, True),
    ("exists false under a missing parent", {"missing-parent": {"x": [{"exists": False}]}}, True),
    # nested objects and arrays of objects (array-consistent)
    ("nested field", {"detail": {"nested": {"c1": [100]}}}, True),
    ("nested field mismatch", {"detail": {"nested": {"c1": [101]}}}, False),
    ("array of objects, same element", {"detail": {"employees": {"first": ["Anna"], "last": ["Smith"]}}}, True),
    ("array of objects, fields from different elements",
     {"detail": {"employees": {"first": ["John"], "last": ["Smith"]}}}, False),
    # $or
    ("$or, second branch", {"source": ["aws.ec2"], "$or": [{"detail": {"state": ["stopped"]}},
                                                           {"detail": {"c-count": [5]}}]}, True),
    ("$or, no branch", {"$or": [{"source": ["aws.s3"]}, {"detail": {"state": ["stopped"]}}]}, False),
    ("$or, AND outside fails", {"source": ["aws.s3"], "$or": [{"detail": {"c-count": [5]}},
                                                              {"detail": {"d-count": [3]}}]}, False),
    ("$or nested inside detail", {"detail": {"$or": [{"state": ["stopped"]}, {"d-count": [{"numeric": ["<", 4]}]}]}},
     True),
    ("$or with inner AND", {"$or": [{"source": ["aws.ec2"], "detail": {"state": ["stopped"]}},
                                    {"region": ["us-east-1"], "detail": {"flag": [True]}}]}, True),
    ("several alternatives in one leaf", {"detail": {"state": [{"prefix": "stop"}, {"suffix": "ning"}]}}, True),
]


@pytest.mark.parametrize(("name", "pattern", "expected"), CASES, ids=[c[0] for c in CASES])
def test_pattern(name: str, pattern: dict[str, Any], expected: bool) -> None:
    assert compile_pattern(pattern).matches(EVENT) is expected


BAD: list[tuple[dict[str, Any] | Any, str]] = [
    ({}, "must not be empty"),
    ([], "must be an object"),
    ({"source": "aws.ec2"}, "source: must be an array"),
    ({"source": []}, "source: a leaf must list at least one value"),
    ({"source": [{"prefix": 5}]}, "prefix takes a string"),
    ({"source": [{"prefix": "a", "suffix": "b"}]}, "exactly one key"),
    ({"source": [{"unknown-op": "a"}]}, "unknown operator"),
    ({"detail": {"x": [{"numeric": [">", "a"]}]}}, "detail.x: numeric: bad comparison"),
    ({"detail": {"x": [{"numeric": ["<", 5, ">", 1]}]}}, "lower bound"),
    ({"detail": {"x": [{"numeric": [">", 1, "<", 5, "<", 6]}]}}, "numeric"),
    ({"x": [{"exists": "yes"}]}, "exists takes true or false"),
    ({"x": [{"wildcard": "a**b"}]}, "consecutive"),
    ({"x": [{"wildcard": "a\\b"}]}, "backslash"),
    ({"x": [{"anything-but": ["a", 1]}]}, "all strings or all numbers"),
    ({"x": [{"anything-but": []}]}, "must not be empty"),
    ({"x": [{"anything-but": {"numeric": [">", 1]}}]}, "does not support"),
    ({"x": [["nested"]]}, "nested arrays"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_patterns_are_refused_with_the_path(pattern: Any, message: str) -> None:
    with pytest.raises(PatternError, match=message.replace("*", r"\*")):
        compile_pattern(pattern)


def test_or_with_a_single_object_is_a_plain_field_name() -> None:
    # event-ruler only reads "$or" as OR with 2+ objects; otherwise it is an ordinary field
    p = compile_pattern({"$or": {"a": ["x"]}})
    assert p.matches({"$or": {"a": "x"}})
    assert not p.matches({"a": "x"})
