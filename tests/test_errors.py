"""Remote errors arrive as RemoteError (and the original type) whatever their constructor wants."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from de_magic.wire.errors import RemoteError, remote_error

from raising_backend import NeedsKeywords  # loaded here, so remote ones are rebuilt as it

RAISING_BACKEND = str(Path(__file__).with_name("raising_backend.py"))

# constructors that want several arguments, keywords, or none at all
TYPES = {
    "json.decoder.JSONDecodeError": json.JSONDecodeError,
    "subprocess.CalledProcessError": subprocess.CalledProcessError,
    "subprocess.TimeoutExpired": subprocess.TimeoutExpired,
    "UnicodeDecodeError": UnicodeDecodeError,
    "UnicodeEncodeError": UnicodeEncodeError,
    "OSError": OSError,
    "FileNotFoundError": FileNotFoundError,
    "KeyError": KeyError,
    "StopIteration": StopIteration,
    "SyntaxError": SyntaxError,
    "raising_backend.NeedsKeywords": NeedsKeywords,
}


def _remote(qualname: str, message: str) -> RemoteError:
    return remote_error({"type": qualname, "message": message, "traceback": "Traceback: line 1\n", "code": 3})


@pytest.mark.parametrize("qualname", TYPES)
def test_any_exception_type_is_rebuilt_with_its_traceback(qualname):
    error = _remote(qualname, "it failed")
    assert isinstance(error, RemoteError) and isinstance(error, TYPES[qualname])
    assert error.remote_type == qualname and error.info == {"code": 3}
    assert str(error).startswith(f"{qualname}: it failed") and "Traceback: line 1" in str(error)
    assert repr(error) == f"Remote{TYPES[qualname].__name__}({qualname!r}, 'it failed')"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    with pytest.raises(TYPES[qualname]):
        raise error


def test_a_type_whose_new_wants_arguments_arrives_as_a_plain_remote_error():
    class Picky(Exception):
        def __new__(cls, message, *, code):
            return super().__new__(cls, message)

    Picky.__module__ = __name__  # found by _local_type, like any loaded class
    globals()["Picky"] = Picky
    try:
        error = _remote(f"{__name__}.Picky", "nope")
    finally:
        del globals()["Picky"]
    assert type(error) is RemoteError and str(error).startswith(f"{__name__}.Picky: nope")


@given(qualname=st.sampled_from(sorted(TYPES)), message=st.text())
def test_arbitrary_messages_survive_str_repr_and_pickling(qualname, message):
    error = _remote(qualname, message)
    assert error.args == (message,)
    assert str(error).startswith(f"{qualname}: {message}")
    assert repr(message) in repr(error)
    assert pickle.loads(pickle.dumps(error)).args == (message,)


def test_a_real_backend_raising_them(cluster):
    cluster.start_backend(RAISING_BACKEND, "raising")
    with pytest.raises(json.JSONDecodeError) as info:
        cluster.client.call("raising", "parse", ("{not json",))
    assert isinstance(info.value, RemoteError)
    assert "Expecting property name" in str(info.value) and "json.loads(text)" in info.value.remote_traceback
    with pytest.raises(NeedsKeywords) as info:
        cluster.client.call("raising", "fail_with_code", (7,))
    assert "failed with a code" in str(info.value) and "fail_with_code" in info.value.remote_traceback
