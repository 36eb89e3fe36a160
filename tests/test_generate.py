"""Generated client modules: they compile, import, mirror the originals and forward calls.

Forwarding is exercised by pointing the generated module's backend at the
sample module itself: a local stand-in with exactly the remote members.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

from de_magic.caller.generate import client_module
from de_magic.schema import describe, members_of

sys.path.insert(0, str(Path(__file__).parent))
import sample_backend  # noqa: E402

MISSING = sample_backend.MISSING


def _import(source: str, path: Path, name: str = "generated_api"):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def api() -> dict:
    return describe("sample", members_of(sample_backend), "A sample backend.")


@pytest.fixture
def generated(api, tmp_path):
    module = _import(client_module(api, "tcp://127.0.0.1:5555"), tmp_path / "api.py")
    module._proxy = sample_backend  # calls go to the sample module instead of a broker
    return module


def test_source_parses_and_compiles(api):
    source = client_module(api)
    ast.parse(source)
    compile(source, "api.py", "exec")


def test_annotations_name_only_imported_names(api):
    """Type checkers resolve every annotation: the modules they name are imported, for type checking only."""
    source = client_module(api)
    assert "if TYPE_CHECKING:\n    import pandas\n    import sample_backend\n    import xarray\n" in source
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F",
                             "--stdin-filename", "api.py", "-"], input=source, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_module_header(generated):
    doc = generated.__doc__
    assert "'sample'" in doc and "tcp://127.0.0.1:5555" in doc and "A sample backend." in doc
    assert "do not edit" in doc
    assert (generated.NAME, generated.BROKER) == ("sample", "tcp://127.0.0.1:5555")
    assert generated.__all__ == ["compute_sum", "scale", "combine", "summarize", "untyped", "Stats"]
    assert generated.Client.__module__ == "de_magic.caller.client"


def test_default_broker_is_none(api, tmp_path):
    module = _import(client_module(api), tmp_path / "api_default.py", "api_default")
    assert module.BROKER is None
    assert "broker: default" in module.__doc__


def _expected_default(original: inspect.Parameter, generated) -> object:
    return generated.REMOTE_DEFAULT if original.default is MISSING else original.default


@pytest.mark.parametrize("name", ["compute_sum", "scale", "combine", "summarize", "untyped"])
def test_functions_mirror_the_originals(generated, api, name):
    original, copy = inspect.signature(getattr(sample_backend, name)), inspect.signature(getattr(generated, name))
    assert [(p.name, p.kind, _expected_default(p, generated)) for p in original.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in copy.parameters.values()]
    entry = api["members"][name]
    assert [p.annotation for p in copy.parameters.values()] == \
           [p["annotation"] or inspect.Parameter.empty for p in entry["parameters"]]
    assert copy.return_annotation == (entry["returns"]["annotation"] or inspect.Signature.empty)
    assert inspect.getdoc(getattr(generated, name)) == (inspect.getdoc(getattr(sample_backend, name)) or None)


def test_def_lines_repeat_the_described_signatures(api):
    source = client_module(api)
    for name in ["compute_sum", "scale", "combine", "untyped"]:
        assert f"\ndef {name}{api['members'][name]['signature']}:\n" in source
    assert "\ndef summarize(frame: pandas.DataFrame, how=REMOTE_DEFAULT, limit: int | None = 3)" in source


def test_class_mirrors_constructor_and_methods(generated, api):
    assert inspect.getdoc(generated.Stats) == inspect.getdoc(sample_backend.Stats)
    assert str(inspect.signature(generated.Stats)) == "(ddof: 'int' = 0)"
    assert [m for m in vars(generated.Stats) if not m.startswith("_")] == ["std", "norm", "default"]
    instance = generated.Stats(2)
    for method in ["std", "norm", "default"]:
        original = inspect.signature(getattr(sample_backend.Stats(), method))
        copy = inspect.signature(getattr(instance, method))
        assert [(p.name, p.kind, p.default) for p in original.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in copy.parameters.values()]
        assert inspect.getdoc(getattr(instance, method)) == inspect.getdoc(getattr(sample_backend.Stats, method))


def test_calls_are_forwarded(generated):
    assert generated.scale([1.0, 2.0], 3, offset=0.5) == sample_backend.scale([1.0, 2.0], 3, offset=0.5)
    assert generated.combine(1, 2, 3, sep="+", strict=True, unused=1.0) == "1+2+3"
    assert generated.untyped("x") == "x"
    assert generated.Stats(1).std([1.0, 3.0]) == sample_backend.Stats(1).std([1.0, 3.0])
    assert generated.Stats().norm(3.0, y=4.0) == 5.0
    assert generated.Stats().default(verbose=True).ddof == 1


def test_compute_sum_is_forwarded_with_xarray(generated):
    xarray = pytest.importorskip("xarray")
    da = xarray.DataArray([[1, 2], [3, 4]], dims=("time", "x"))
    assert generated.compute_sum(da).values.tolist() == [4, 6]
    assert generated.compute_sum.__annotations__["da"] == "xarray.DataArray"  # never evaluated


def test_arguments_left_at_remote_default_are_not_sent(generated):
    assert generated.summarize([1, 2]) == {"rows": 2.0, "default_how": 1.0, "limit": 3.0}
    assert generated.summarize([1], how="mean", limit=None) == {"rows": 1.0, "default_how": 0.0, "limit": 0.0}
    assert repr(generated.REMOTE_DEFAULT) == "REMOTE_DEFAULT"


def _skip_me(x, y=MISSING, z=2, /):
    return x, y, z


def _tail(x, y=MISSING, /):
    return x, y


def test_positional_remote_defaults(tmp_path):
    members = {"skip_me": _skip_me, "tail": _tail}
    module = _import(client_module(describe("b", members)), tmp_path / "b.py", "b_api")
    module._proxy = types.SimpleNamespace(**members)
    assert module.tail(1) == (1, MISSING)
    assert module.skip_me(1, 5) == (1, 5, 2)
    with pytest.raises(TypeError, match="default only the backend knows"):
        module.skip_me(1)


def _quoted(path: str = "C:\\temp"):
    """Say "hi" with \\n, a backslash \\ and \"""triple quotes\""".

    Ends in a quote: \""""


def _named_badly(_backend: int):
    """A parameter that would hide the generated module's _backend()."""


def test_awkward_names_and_docstrings(tmp_path):
    api = describe("c", {"quoted": _quoted, "class": _quoted, "BROKER": _quoted, "bad": _named_badly})
    source = client_module(api)
    assert "# skipped: 'class' is not a valid Python identifier" in source
    assert "# skipped: 'BROKER' would shadow a name the generated code uses" in source
    assert "# skipped: '_backend' would shadow a name the generated code uses" in source
    module = _import(source, tmp_path / "c.py", "c_api")
    assert module.__all__ == ["quoted"]
    assert inspect.getdoc(module.quoted) == inspect.getdoc(_quoted)
    assert inspect.signature(module.quoted).parameters["path"].default == "C:\\temp"
