"""The wire protocol and payload encoding, without sockets."""

import numpy as np
import pytest

from de_magic.wire import protocol as P
from de_magic.wire import serialize
from de_magic.wire.errors import BackendLost, CallTimeout, RemoteError, from_header


def test_every_message_parses_back_to_what_its_constructor_built():
    header = P.dump_header({"member": "f"})
    call = P.parse(P.call(b"rid", "svc", b"", header, [b"payload"]), P.AT_BROKER)
    assert call == P.Call(b"rid", "svc", b"", [header, b"payload"])
    assert P.parse(P.ready("svc", b"w" * 8, b"s" * 32, {"capacity": 2}), P.AT_BROKER) == P.Ready(
        "svc", b"w" * 8, b"s" * 32, {"capacity": 2})
    assert P.parse(P.slot(b"w", b"s"), P.AT_BROKER) == P.Slot(b"w", b"s", [])
    assert P.parse(P.slot_busy(b"w", b"s", b"s1", b"s2"), P.AT_BROKER) == P.SlotBusy(b"w", b"s", [b"s1", b"s2"])
    assert P.parse(P.answer(P.REPLY, b"c", b"r", header, [b"p"]), P.AT_BROKER) == P.Answer(
        P.REPLY, b"c", b"r", [header, b"p"])
    # the broker's messages carry the routing address first
    to_client = P.to_client(b"addr", P.REPLY, b"r", [header, b"p"])
    assert to_client[0] == b"addr" and P.parse(to_client[1:], P.AT_CLIENT) == P.Reply(b"r", {"member": "f"}, [b"p"])
    work = P.work(b"slot", b"c", b"r", "K", [header, b"p"])
    assert P.parse(work[1:], P.AT_WORKER) == P.Work(b"c", b"r", "K", {"member": "f"}, [b"p"])
    assert P.parse(P.welcome(b"a", {"max_message_size": 5})[1:], P.AT_WORKER) == P.Welcome({"max_message_size": 5})
    assert P.parse(P.reject(b"a", "no")[1:], P.AT_WORKER) == P.Reject("no")


@pytest.mark.parametrize("frames, needle", [
    ([], "at least 2"),
    ([b"de-magic/0", P.CALL], "version mismatch"),
    ([b"\xff\xfe", P.CALL], "version mismatch"),
    ([P.VERSION, b"NOPE"], "unknown message type"),
    ([P.VERSION, P.CALL, b"rid"], "needs at least 4 frames"),
    ([P.VERSION, P.CANCEL, b"rid", b"extra"], "needs 1 frames"),
    ([P.VERSION, P.CALL, b"rid", b"\xff", b"", b"{}"], "not UTF-8"),
    ([P.VERSION, P.CALL, b"rid", b"", b"", b"{}"], "backend name"),
    ([P.VERSION, P.LIST, b"rid", b"[" * 100_000], "not JSON"),  # nesting that would blow the stack
    ([P.VERSION, P.READY, b"x", b"w", b"s", b"{bad"], "not JSON"),
])
def test_parse_rejects_with_a_clear_message(frames, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.parse(frames, P.AT_BROKER)


def test_a_malformed_request_names_the_request_to_answer():
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([P.VERSION, P.LIST, b"rid-1", b"{"], P.AT_BROKER)
    assert caught.value.rid == b"rid-1"
    # a call to a worker whose header nests too deep: the worker can still answer its caller
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([P.VERSION, P.CALL, b"client", b"rid-2", b"[" * 100_000], P.AT_WORKER)
    assert (caught.value.client, caught.value.rid) == (b"client", b"rid-2")


def test_load_header_rejects_garbage():
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.load_header(b"\x80garbage")
    with pytest.raises(P.ProtocolError, match="JSON object"):
        P.load_header(b"[1, 2]")
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.load_header(b'{"a":' * 50_000)


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
    ({"capacity": "many"}, "'capacity' must be a non-negative integer"),
    ({"queue": 1.5}, "'queue' must be a non-negative integer"),
    ({"queue": -1}, "'queue' must be a non-negative integer"),
    ({"api": []}, "'api' must be an object"),
    ({"dask": "tcp://somewhere"}, "'dask' must be an object"),
    ({"allow_clients": "alice"}, "'allow_clients' must be a list"),
    ({"heartbeat": "often"}, "'heartbeat' must be a non-negative number"),
    ({"heartbeat": float("inf")}, "'heartbeat' must be a non-negative number"),
])
def test_ready_info_is_checked_before_use(info, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.check_ready_info(info)
    assert P.check_ready_info({"capacity": 4, "queue": 10, "allow_clients": ["alice"]})["capacity"] == 4


def test_every_error_a_caller_can_meet_is_exported():
    import de_magic
    from de_magic.wire.errors import DeMagicError

    for cls in DeMagicError.__subclasses__():
        assert getattr(de_magic, cls.__name__, None) is cls and cls.__name__ in de_magic.__all__, cls


def test_error_types_are_looked_up_not_imported():
    import sys

    assert "wsgiref.simple_server" not in sys.modules
    err = from_header({"kind": "remote", "type": "wsgiref.simple_server.ServerError", "message": "x"})
    # the peer names the module; importing it would run its code here
    assert "wsgiref.simple_server" not in sys.modules and type(err) is RemoteError


USAGE = {"sessions": {"count": 1, "bytes": 10, "each": [{"since": 1.5, "bytes": 10}]}, "refs": {"count": 2, "bytes": 8}}


def test_usage_parses_back_and_is_checked():
    assert P.parse(P.usage(USAGE), P.AT_BROKER) == P.Usage(USAGE)
    for bad, needle in [({"refs": {}}, "must be objects"),
                        ({**USAGE, "refs": {"count": -1, "bytes": 0}}, "non-negative"),
                        ({**USAGE, "sessions": {"count": 1, "bytes": 1, "each": [{"since": "x", "bytes": 1}]}}, "each"),
                        ({**USAGE, "pad": "x" * P.MAX_USAGE}, "over")]:
        with pytest.raises(P.ProtocolError, match=needle):
            P.parse(P.usage(bad), P.AT_BROKER)


def test_persistent_ids_stand_for_objects_that_are_already_there():
    held = {"r1": np.arange(5.0)}
    frames = serialize.dumps({"a": [held["r1"], 2]}, lambda o: ("ref", "r1") if o is held["r1"] else None)
    assert serialize.nbytes(frames) < 200  # the array itself did not go
    loaded = serialize.loads(frames, lambda pid: held[pid[1]])
    assert loaded["a"][0] is held["r1"] and loaded["a"][1] == 2
