"""The wire protocol and payload encoding, without sockets."""

import numpy as np
import pytest

from de_magic import protocol as P
from de_magic import serialize
from de_magic.errors import BackendLost, CallTimeout, RemoteError, from_header


def test_encode_decode_round_trip():
    frames = P.encode(P.CALL, b"rid", b"svc", b"", P.dump_header({"member": "f"}), b"payload")
    msg = P.decode(frames, P.FROM_CLIENT)
    assert msg.type == P.CALL
    assert list(msg.frames) == [b"rid", b"svc", b"", b'{"member":"f"}', b"payload"]


@pytest.mark.parametrize("frames, needle", [
    ([], "at least 2"),
    ([b"de-magic/0", P.CALL], "version mismatch"),
    ([b"\xff\xfe", P.CALL], "version mismatch"),
    ([P.VERSION, b"NOPE"], "unknown message type"),
    ([P.VERSION, P.CALL, b"rid"], "needs 5 frames"),
    ([P.VERSION, P.REPLY, b"c", b"r", b"h"], "unknown message type"),  # a worker's type from a client table
])
def test_decode_rejects_with_a_clear_message(frames, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.decode(frames, P.FROM_CLIENT)


def test_worker_and_client_types_do_not_overlap():
    # the broker tells clients from workers by message type alone
    assert not set(P.FROM_CLIENT) & set(P.FROM_WORKER)


def test_load_header_rejects_garbage():
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.load_header(b"\x80garbage")
    with pytest.raises(P.ProtocolError, match="JSON object"):
        P.load_header(b"[1, 2]")


def test_large_arrays_travel_out_of_band_and_arrive_writable():
    arr = np.arange(100_000, dtype="float64")
    frames = serialize.dumps({"a": arr, "small": np.arange(3)})
    assert len(frames) == 2  # pickle stream + one out-of-band buffer; the small array stays in band
    assert frames[1].nbytes == arr.nbytes
    back = serialize.loads([bytes(f) for f in frames[:1]] + [bytearray(frames[1])])
    np.testing.assert_array_equal(back["a"], arr)
    back["a"][0] = 42.0  # writable, as a local array would be


def test_error_headers_map_to_exception_types():
    assert isinstance(from_header({"kind": "timeout", "message": "m"}), CallTimeout)
    assert isinstance(from_header({"kind": "lost", "message": "m"}), BackendLost)
    err = from_header({"kind": "remote", "type": "ValueError", "message": "bad", "traceback": "Traceback ...\n"})
    assert isinstance(err, RemoteError) and isinstance(err, ValueError)
    assert err.remote_type == "ValueError" and "Traceback" in str(err)
    custom = from_header({"kind": "remote", "type": "nowhere.Custom", "message": "x"})
    assert type(custom) is RemoteError and custom.remote_type == "nowhere.Custom"


@pytest.mark.parametrize("info, needle", [
    (b'{"capacity": "many"}', "'capacity' must be an integer"),
    (b'{"queue": 1.5}', "'queue' must be an integer"),
    (b'{"api": []}', "'api' must be an object"),
    (b'{"allow_clients": "alice"}', "'allow_clients' must be a list"),
])
def test_ready_info_is_checked_before_use(info, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.load_ready_info(info)
    assert P.load_ready_info(b'{"capacity": 4, "queue": 10, "allow_clients": ["alice"]}')["capacity"] == 4


def test_every_error_a_caller_can_meet_is_exported():
    import de_magic
    from de_magic.errors import DeMagicError

    for cls in DeMagicError.__subclasses__():
        assert getattr(de_magic, cls.__name__, None) is cls and cls.__name__ in de_magic.__all__, cls


def test_error_types_are_looked_up_not_imported():
    import sys

    assert "wsgiref.simple_server" not in sys.modules
    err = from_header({"kind": "remote", "type": "wsgiref.simple_server.ServerError", "message": "x"})
    # the peer names the module; importing it would run its code here
    assert "wsgiref.simple_server" not in sys.modules and type(err) is RemoteError
