"""The JSON serializer of durable stores: what goes in comes back out, or it is refused."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import pathlib
import uuid
import zoneinfo
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aflow
from aflow._serialize import JsonSerializer


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Code(enum.IntEnum):
    OK = 200
    GONE = 410


class Point(NamedTuple):
    x: int
    y: tuple[int, int]


class Label(str):
    pass


def assert_same(back: Any, value: Any) -> None:
    """Equal, and of the same types all the way down (1 == 1.0 == True is not enough)."""
    assert type(back) is type(value), (back, value)
    assert back == value
    if isinstance(value, list | tuple):
        for b, v in zip(back, value, strict=True):
            assert_same(b, v)
    elif isinstance(value, dict):
        for (bk, bv), (vk, vv) in zip(back.items(), value.items(), strict=True):
            assert_same(bk, vk)
            assert_same(bv, vv)
    elif isinstance(value, frozenset | set):
        assert sorted(map(repr, back)) == sorted(map(repr, value))
    elif isinstance(value, dt.datetime | dt.time):
        assert (back.fold, back.tzinfo) == (value.fold, value.tzinfo)


def round_trip(value: Any) -> Any:
    serializer = JsonSerializer()
    return serializer.loads(serializer.dumps(value, task="t"))


@pytest.mark.parametrize(
    "value",
    [
        {"a": (1, 2), "b": {1, 2}, "c": frozenset({"x"}), 3: b"\x00\xff"},
        [dt.datetime(2026, 11, 30, 23, 5, tzinfo=dt.UTC), dt.date(2026, 1, 2), dt.time(4, 5)],
        [dt.timedelta(seconds=1.5), decimal.Decimal("1.10"), uuid.UUID(int=7)],
        [dt.timedelta(days=200_000, microseconds=1), dt.timedelta(days=-3, seconds=5)],
        [
            dt.datetime(2024, 6, 28, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            dt.time(9, 30, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        ],
        [pathlib.Path("/a/b"), pathlib.PurePosixPath("x/y"), pathlib.PureWindowsPath(r"C:\\x")],
        [Colour.RED, Code.GONE, Point(1, (2, 3))],
        {"__aflow__": "not a tag", "v": 1},
        float("inf"),
    ],
)
def test_well_known_values_come_back_with_their_types(value: Any) -> None:
    assert_same(round_trip(value), value)


def test_an_int_enum_comes_back_as_its_member_not_as_an_int() -> None:
    back = round_trip({"status": Code.OK})["status"]
    assert back is Code.OK


@pytest.mark.parametrize(
    ("value", "type_", "path", "detail"),
    [
        (object(), "builtins.object", "result", ""),
        ({"k": [1, Label("x")]}, "tests.test_serialize.Label", "result['k'][1]", "subclass of str"),
    ],
)
def test_what_would_not_come_back_the_same_is_refused(
    value: Any, type_: str, path: str, detail: str
) -> None:
    with pytest.raises(aflow.errors.SerializationError) as info:
        JsonSerializer().dumps(value, task="price")
    assert (info.value.task, info.value.type, info.value.path) == ("price", type_, path)
    assert detail in str(info.value)


def test_a_class_another_process_cannot_import_is_refused() -> None:
    class Local(enum.Enum):
        A = 1

    with pytest.raises(aflow.errors.SerializationError, match="inside a function"):
        JsonSerializer().dumps(Local.A, task="t")


def test_a_stored_class_that_is_not_an_enum_is_not_loaded() -> None:
    text = '{"__aflow__":"enum","v":["os:system","echo"]}'
    with pytest.raises(TypeError, match="not an Enum"):
        JsonSerializer().loads(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.sampled_from(list(Colour) + list(Code))
    | st.datetimes(timezones=st.none() | st.just(dt.UTC))
    | st.times()
    | st.decimals(allow_nan=False),
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner)
        | st.dictionaries(st.integers(), inner)
        | st.frozensets(st.integers())
        | st.builds(Point, st.integers(), st.tuples(st.integers(), st.integers()))
    ),
    max_leaves=20,
)


@given(json_values)
def test_any_mix_of_supported_values_round_trips(value: Any) -> None:
    assert_same(round_trip(value), value)


def test_a_zoned_datetime_keeps_its_zone_not_just_its_offset() -> None:
    summer = dt.datetime(2024, 6, 28, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    back = round_trip(summer)
    later = back + dt.timedelta(days=183)
    assert (
        later.utcoffset() == (summer + dt.timedelta(days=183)).utcoffset() == dt.timedelta(hours=1)
    )


def test_a_tzinfo_that_would_come_back_as_a_fixed_offset_is_refused() -> None:
    class Custom(dt.tzinfo):
        def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=2)

    with pytest.raises(aflow.errors.SerializationError, match="fixed offset"):
        JsonSerializer().dumps(dt.datetime(2024, 1, 1, tzinfo=Custom()), task="t")


def test_an_int_too_long_for_json_is_a_serialization_error() -> None:
    with pytest.raises(aflow.errors.SerializationError, match=r"'huge'.*4300 digits"):
        JsonSerializer().dumps({"n": 10**5000}, task="huge")


def test_a_stored_class_is_never_imported_because_the_store_says_so() -> None:
    import sys

    assert "this" not in sys.modules  # importing it prints the Zen of Python
    with pytest.raises(TypeError, match="not imported"):
        JsonSerializer().loads('{"__aflow__":"enum","v":["this:s","x"]}')
    assert "this" not in sys.modules
