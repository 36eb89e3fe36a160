"""API descriptions and argument checks built from the real sample backend module."""

from __future__ import annotations

import inspect
import json
import sys
import time
import timeit
import types
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from de_magic.schema import annotation_text, describe, members_of, parse_docstring
from de_magic.schema.arguments import check_arguments

sys.path.insert(0, str(Path(__file__).parent))
import sample_backend  # noqa: E402
from sample_backend import Stats, combine, compute_sum, scale, summarize, untyped  # noqa: E402


@pytest.fixture(scope="module")
def api() -> dict:
    return describe("sample", members_of(sample_backend), "  A sample backend.\n  Two lines.")


def test_members_of_lists_own_public_functions_and_classes_in_definition_order():
    assert list(members_of(sample_backend)) == ["compute_sum", "scale", "combine", "summarize", "untyped", "Stats"]


def test_members_of_follows_dunder_all_and_drops_constants():
    module = types.ModuleType("mod")
    module.__all__ = ["b", "a", "VERSION"]
    module.a, module.b, module.VERSION, module.c = untyped, combine, "1.0", scale
    assert members_of(module) == {"b": combine, "a": untyped}


def test_description_is_json_and_keeps_name_and_doc(api):
    assert json.loads(json.dumps(api)) == api
    assert api["name"] == "sample"
    assert api["doc"] == "A sample backend.\nTwo lines."


def test_numpydoc_function(api):
    entry = api["members"]["compute_sum"]
    assert entry["kind"] == "function"
    assert entry["signature"] == "(da: xarray.DataArray, dim: str = 'time') -> xarray.DataArray"
    assert entry["summary"] == "Sum an array along one dimension."
    assert entry["doc"] == inspect.cleandoc(compute_sum.__doc__)
    da, dim = entry["parameters"]
    assert da == {"name": "da", "kind": "POSITIONAL_OR_KEYWORD", "annotation": "xarray.DataArray", "required": True,
                  "default": None, "default_repr": None, "doc": "the input array",
                  "schema": {"description": "the input array", "x-python-type": "xarray.DataArray"}}
    assert dim == {"name": "dim", "kind": "POSITIONAL_OR_KEYWORD", "annotation": "str", "required": False,
                   "default": "time", "default_repr": "'time'", "doc": 'dimension to sum over, e.g. "time"',
                   "schema": {"type": "string", "default": "time", "description": 'dimension to sum over, e.g. "time"'}}
    assert entry["returns"] == {"annotation": "xarray.DataArray", "doc": "the summed array",
                                "schema": {"description": "xarray.DataArray", "x-python-type": "xarray.DataArray"}}
    assert entry["schema"] == {"type": "object", "title": "compute_sum",
                               "properties": {"da": da["schema"], "dim": dim["schema"]}, "required": ["da"]}


def test_google_docstring_literal_optional_and_bounds(api):
    entry = api["members"]["scale"]
    assert entry["signature"] == ("(values: list[float], factor: int = 1, mode: Literal['a', 'b'] = 'a', "
                                  "offset: float | None = None) -> list[float]")
    values, factor, mode, offset = (p["schema"] for p in entry["parameters"])
    assert values == {"type": "array", "items": {"type": "number"}, "description": "the numbers to multiply."}
    assert factor == {"type": "integer", "minimum": 0, "maximum": 10, "default": 1, "description": "how much, 0 to 10."}
    assert mode == {"type": "string", "enum": ["a", "b"], "default": "a", "description": '"a" or "b".'}
    assert offset == {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
    assert [p["required"] for p in entry["parameters"]] == [True, False, False, False]
    assert entry["returns"]["doc"] == "the scaled numbers."
    assert entry["returns"]["schema"] == {"type": "array", "items": {"type": "number"}}
    assert entry["schema"]["required"] == ["values"]


def test_parameter_kinds_and_short_numpydoc_style(api):
    entry = api["members"]["combine"]
    assert entry["signature"] == "(first: int, /, *rest: int, sep: str = ',', strict: bool, **extra: float) -> str"
    params = {p["name"]: p for p in entry["parameters"]}
    assert {n: p["kind"] for n, p in params.items()} == {
        "first": "POSITIONAL_ONLY", "rest": "VAR_POSITIONAL", "sep": "KEYWORD_ONLY", "strict": "KEYWORD_ONLY",
        "extra": "VAR_KEYWORD"}
    assert params["first"]["doc"] == "the first number"
    assert params["rest"]["schema"] == {"type": "array", "items": {"type": "integer"}, "description": "more numbers"}
    assert params["extra"]["schema"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert not params["rest"]["required"] and not params["extra"]["required"]
    assert entry["schema"]["required"] == ["first", "strict"]


def test_unresolvable_annotation_and_non_json_default(api):
    frame, how, limit = api["members"]["summarize"]["parameters"]
    assert frame["annotation"] == "pandas.DataFrame"  # imported only under TYPE_CHECKING
    assert frame["schema"] == {"description": "pandas.DataFrame", "x-python-type": "pandas.DataFrame"}
    assert (how["annotation"], how["required"], how["default"], how["schema"]) == (None, False, None, {})
    assert how["default_repr"] == repr(sample_backend.MISSING)
    assert limit["annotation"] == "int | None"  # resolved although frame's annotation is not
    assert limit["schema"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": 3}


def test_missing_annotations(api):
    entry = api["members"]["untyped"]
    assert entry["signature"] == "(x, y=2)"
    assert [p["schema"] for p in entry["parameters"]] == [{}, {"default": 2}]
    assert entry["returns"] == {"annotation": None, "doc": "", "schema": {}}
    assert (entry["summary"], entry["doc"]) == ("", "")


def test_class_constructor_and_methods(api):
    entry = api["members"]["Stats"]
    assert entry["kind"] == "class"
    assert entry["signature"] == "(ddof: int = 0)"
    assert entry["summary"] == "Statistics with a fixed number of degrees of freedom."
    assert entry["parameters"][0]["doc"] == "delta degrees of freedom"
    assert entry["schema"] == {"type": "object", "title": "Stats", "required": [], "properties": {
        "ddof": {"type": "integer", "default": 0, "description": "delta degrees of freedom"}}}
    assert "returns" not in entry
    methods = entry["methods"]
    assert list(methods) == ["std", "norm", "default"]  # no property, no private method
    assert {m["kind"] for m in methods.values()} == {"method"}
    assert methods["std"]["signature"] == "(values: list[float]) -> float"
    assert methods["norm"]["signature"] == "(x: float, y: float = 0.0) -> float"
    assert methods["default"]["signature"] == "(*, verbose: bool = False) -> sample_backend.Stats"
    assert methods["std"]["returns"]["schema"] == {"type": "number"}


class Point(BaseModel):
    x: float


class Segment(BaseModel):
    start: Point
    end: Point


def test_pydantic_model_definitions_move_to_the_object_schema():
    def length(segment: Segment, scale: float = 1.0) -> float:
        return scale * abs(segment.end.x - segment.start.x)

    entry = describe("b", {"length": length})["members"]["length"]
    segment = entry["parameters"][0]["schema"]
    assert segment["properties"]["start"] == {"$ref": "#/$defs/Point"}
    assert "Point" in segment["$defs"]  # each parameter schema stands on its own
    assert entry["schema"]["$defs"] == segment["$defs"]
    assert entry["schema"]["properties"]["segment"] == {k: v for k, v in segment.items() if k != "$defs"}


def test_annotation_text():
    import numpy
    import xarray

    assert annotation_text(int) == "int"
    assert annotation_text(list[float]) == "list[float]"
    assert annotation_text(Optional[float]) == "float | None"
    assert annotation_text(Literal["a", "b"]) == "Literal['a', 'b']"
    assert annotation_text(Annotated[int, Field(ge=0)]) == "int"
    assert annotation_text(xarray.DataArray) == "xarray.DataArray"
    assert annotation_text(numpy.ndarray) == "numpy.ndarray"
    assert annotation_text(dict[str, list[xarray.Dataset]]) == "dict[str, list[xarray.Dataset]]"


def test_parse_docstring_numpydoc_and_google():
    numpy_doc = """Title.

    Parameters
    ----------
    a, b : int
        two numbers
    *args
        the rest
    flag : switch it on

    Returns
    -------
    total : int
        the total
    """
    assert parse_docstring(numpy_doc) == ({"a": "two numbers", "b": "two numbers", "args": "the rest",
                                           "flag": "switch it on"}, "the total")
    google_doc = """Title.

    Args:
        a (int): first
            and more.
        **kw: options.

    Returns:
        The sum: always positive.
    """
    assert parse_docstring(google_doc) == ({"a": "first and more.", "kw": "options."}, "The sum: always positive.")
    assert parse_docstring("Just text.\n\nNo sections: here.") == ({}, "")


def test_describe_a_hundred_members_is_fast():
    members = {}
    for i in range(100):
        def f(x: int, values: list[float], mode: Literal["a", "b"] = "a", n: Annotated[int, Field(ge=0)] = 1):
            """Doc.

            Parameters
            ----------
            x : int
                the x
            """
        f.__name__ = f"f{i}"
        members[f"f{i}"] = f
    describe("warm", {"f": members["f0"]})
    start = time.perf_counter()
    api = describe("many", members)
    assert time.perf_counter() - start < 0.5
    assert len(api["members"]) == 100


# -- check_arguments ----------------------------------------------------------

@pytest.mark.parametrize("func, args, kwargs", [
    (scale, ([1, 2.5],), {}),
    (scale, ((1, 2),), {"factor": 3, "mode": "b", "offset": None}),
    (scale, ([1.0],), {"offset": 2}),
    (combine, (1, 2, 3), {"strict": True, "anything": 1.5}),
    (summarize, ("a name known only to type checkers: unchecked",), {}),
    (summarize, (object(),), {"how": object(), "limit": None}),
    (untyped, ([], {}), {}),
    (Stats, (), {"ddof": 1}),
    (Stats(1).std, ([1.0, 2.0],), {}),
    (Stats.norm, (3.0,), {"y": 4}),
    (Stats.default, (), {"verbose": False}),
])
def test_check_arguments_accepts_valid_calls(func, args, kwargs):
    check_arguments(func, args, kwargs)


def test_check_arguments_accepts_numpy_scalars():
    import numpy

    check_arguments(scale, ([numpy.float32(1.0)],), {"factor": numpy.int64(2)})
    check_arguments(combine, (numpy.int8(1),), {"strict": numpy.bool_(True)})


@pytest.mark.parametrize("func, args, kwargs, message", [
    (scale, (), {}, "scale() missing a required argument: 'values'"),
    (scale, ([1.0],), {"nope": 1}, "scale() got an unexpected keyword argument 'nope'"),
    (scale, ("abc",), {}, "scale() argument 'values': expected list[float], got str ('abc')"),
    (scale, ([1.0, "x"],), {}, "scale() argument 'values': expected list[float], got list ([1.0, 'x'])"),
    (scale, ([1.0], 2.5), {}, "scale() argument 'factor': expected int, got float (2.5)"),
    (scale, ([1.0],), {"mode": "c"}, "scale() argument 'mode': expected Literal['a', 'b'], got str ('c')"),
    (scale, ([1.0],), {"offset": "1"}, "scale() argument 'offset': expected float | None, got str ('1')"),
    (combine, (1, 2, "3"), {"strict": True}, "combine() argument 'rest': expected int, got str ('3')"),
    (combine, (1,), {"strict": 1}, "combine() argument 'strict': expected bool, got int (1)"),
    (combine, (1,), {"strict": True, "w": "heavy"}, "combine() argument 'extra': expected float, got str ('heavy')"),
    (summarize, (None,), {"limit": "3"}, "summarize() argument 'limit': expected int | None, got str ('3')"),
    (Stats, ("1",), {}, "Stats() argument 'ddof': expected int, got str ('1')"),
    (compute_sum, ("abc",), {}, "compute_sum() argument 'da': expected xarray.DataArray, got str ('abc')"),
    (Stats().std, (), {}, "Stats.std() missing a required argument: 'values'"),
    (Stats.norm, ("3",), {}, "Stats.norm() argument 'x': expected float, got str ('3')"),
    (Stats.default, (True,), {}, "Stats.default() too many positional arguments"),
])
def test_check_arguments_rejects(func, args, kwargs, message):
    with pytest.raises(TypeError) as info:
        check_arguments(func, args, kwargs)
    assert str(info.value) == message


def test_check_arguments_containers():
    def f(pairs: dict[str, int], point: tuple[float, float], tags: set[str], names: list):
        pass

    check_arguments(f, ({"a": 1}, (1, 2.0), {"x"}, ["any", 1]), {})
    for args in [({1: 1}, (1, 2), set(), []), ({"a": "1"}, (1, 2), set(), []), ({}, (1, 2, 3), set(), []),
                 ({}, (1, "2"), set(), []), ({}, (1, 2), {1}, []), ({}, (1, 2), set(), "names")]:
        with pytest.raises(TypeError):
            check_arguments(f, args, {})


def test_check_arguments_is_cheap():
    def tiny(n: int) -> int:
        return n

    check_arguments(tiny, (1,), {})
    per_call = min(timeit.repeat(lambda: check_arguments(tiny, (1,), {}), number=10_000, repeat=5)) / 10_000
    print(f"check_arguments overhead for one int argument: {per_call * 1e6:.2f} µs")
    assert per_call < 20e-6


@pytest.mark.parametrize("doc, expected", [
    ("Count up.\n\nYields:\n    int: the next number\n\nNote:\n    Slow.",
     [(None, None, "Count up."), ("Yields", "returns", "int: the next number"), ("Note", None, "Slow.")]),
    ("Count up.\n\nYields\n------\nint\n    the next number",
     [(None, None, "Count up."), ("Yields", "returns", "int\n    the next number")]),
    ("Scale.\n\nKeyword Arguments:\n    factor: how much\nRaises:\n    ValueError: when negative",
     [(None, None, "Scale."), ("Keyword Arguments", "parameters", "factor: how much"),
      ("Raises", None, "ValueError: when negative")]),
    ("", []),
])
def test_docstring_sections_travel_parsed_so_no_client_parses_again(doc, expected):
    from de_magic.schema.docstrings import doc_sections

    assert [(s["title"], s["kind"], s["text"]) for s in doc_sections(doc)] == expected
    # the sections the parameter and returns tables show are the ones parse_docstring reads
    params, returns = parse_docstring(doc)
    kinds = {s["kind"] for s in doc_sections(doc)}
    assert ("parameters" in kinds) == bool(params) and ("returns" in kinds) == bool(returns)


def _positional(a: int, b: str, c: float = 1.0, d: list | None = None):
    pass


@given(st.lists(st.sampled_from([1, "s", 2.5, None, [1]]), max_size=6))
def test_positional_arguments_are_bound_as_signature_bind_binds_them(args):
    # check_arguments zips positional arguments to parameters instead of calling Signature.bind: same verdicts
    try:
        inspect.signature(_positional).bind(*args)
    except TypeError:
        with pytest.raises(TypeError, match="missing|too many"):
            check_arguments(_positional, tuple(args), {})
        return
    expected = [isinstance(v, t) for v, t in zip(args, (int, str, (int, float), (list, type(None))))]
    if all(expected):
        check_arguments(_positional, tuple(args), {})
    else:
        with pytest.raises(TypeError, match="expected"):
            check_arguments(_positional, tuple(args), {})
