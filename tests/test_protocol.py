"""The wire protocol and payload encoding, without sockets."""

import json

import cloudpickle
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


E = P.envelope


@pytest.mark.parametrize("frames, needle", [
    ([], "at least 1"),
    ([b"de-magic/0", P.CALL], "version mismatch"),
    ([b"\xff\xfe", P.CALL], "version mismatch"),
    ([b"de-magic/5 CALL \x00\x01r"], "peer speaks 'de-magic/5'"),
    ([P.VERSION, P.CALL, b"rid"], "holds only the version"),  # version 4's name in the old layout
    ([E(b"NOPE")], "unknown message type"),
    ([E(P.CALL, b"rid")], "needs 3 envelope fields, got 1"),
    ([E(P.CALL, b"rid", b"svc", b"")], "needs at least 1 frames after the envelope, got 0"),
    ([E(P.CANCEL, b"rid"), b"extra"], "needs 0 frames"),
    ([E(P.CANCEL, b"rid", b"more")], "needs 1 envelope fields, got 2"),
    ([E(P.CANCEL) + b"\x00\x09short"], "field 1 is cut off"),
    ([E(P.CANCEL) + b"\x00"], "field 1 is cut off"),
    ([E(P.CALL, b"rid", b"\xff", b""), b"{}"], "not UTF-8"),
    ([E(P.CALL, b"rid", b"", b""), b"{}"], "backend name"),
    ([E(P.LIST, b"rid"), b"[" * 100_000], "not JSON"),  # nesting that would blow the stack
    ([E(P.READY, b"x", b"w", b"s"), b"{bad"], "not JSON"),
])
def test_parse_rejects_with_a_clear_message(frames, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.parse(frames, P.AT_BROKER)


def test_a_malformed_request_names_the_request_to_answer():
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([E(P.LIST, b"rid-1"), b"{"], P.AT_BROKER)
    assert caught.value.rid == b"rid-1"
    # a call to a worker whose header nests too deep: the worker can still answer its caller
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([E(P.CALL, b"client", b"rid-2", b""), b"[" * 100_000], P.AT_WORKER)
    assert (caught.value.client, caught.value.rid) == (b"client", b"rid-2")


def test_peers_of_other_versions_get_an_answer_they_can_read():
    # versions 1-3 put the version alone in frame 0 and each field in a frame: answered in that layout,
    # which their parser reads as a version mismatch for that request (what version 3 did for version 2)
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([b"de-magic/3", P.CALL, b"rid-3", b"svc", b"", b"{}", b"p"], P.AT_BROKER)
    assert caught.value.rid == b"rid-3" and caught.value.legacy
    answer = P.protocol_error_to(b"addr", caught.value)
    assert answer[:4] == [b"addr", P.VERSION, P.ERROR, b"rid-3"]
    assert "'de-magic/3', this side speaks 'de-magic/4'" in P.load_header(answer[4])["message"]
    # an older worker's READY: a REJECT it reads as a version mismatch, so that its log says why
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([b"de-magic/3", P.READY, b"svc", b"w" * 8, b"s" * 32, b"{}"], P.AT_BROKER)
    assert caught.value.rid is None and P.protocol_error_to(b"addr", caught.value)[:3] == [b"addr", P.VERSION, P.REJECT]
    with pytest.raises(P.ProtocolError) as caught:  # its heartbeats are not answered
        P.parse([b"de-magic/3", P.HEARTBEAT], P.AT_BROKER)
    assert P.protocol_error_to(b"addr", caught.value) is None
    # from version 4 on the envelope's layout stays, so a later version's request id is found
    with pytest.raises(P.ProtocolError) as caught:
        P.parse([b"de-magic/5 CANCEL \x00\x05rid-5"], P.AT_BROKER)
    assert caught.value.rid == b"rid-5" and not caught.value.legacy
    assert P.parse(P.protocol_error_to(b"a", caught.value)[1:], P.AT_CLIENT).rid == b"rid-5"


@given(st.lists(st.binary(max_size=300), max_size=6), st.sampled_from([P.CALL, P.QUERY, P.SLOT, P.READY]))
def test_any_envelope_fields_travel_as_they_were(fields, mtype):
    assert P.peek(P.envelope(mtype, *fields)) == (P.VERSION, mtype, fields, None)


@given(st.binary(max_size=64), st.lists(st.binary(max_size=16), max_size=3))
def test_any_first_frame_is_a_message_or_a_protocol_error(first, more):
    for rules in (P.AT_BROKER, P.AT_CLIENT, P.AT_WORKER):
        for head in (first, P.VERSION + b" " + first, P.envelope(P.CALL) + first, P.envelope(P.QUERY) + first):
            try:
                P.parse([head, *more], rules)
            except P.ProtocolError:
                pass


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


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=30),
    lambda kids: st.lists(kids, max_size=5) | st.lists(kids, max_size=5).map(tuple)
    | st.dictionaries(st.text(max_size=5), kids, max_size=5),
    max_leaves=16)


@given(_PLAIN)
def test_plain_data_pickles_to_the_bytes_cloudpickle_writes_and_comes_back(value):
    # the C pickler's fast path for small plain data must not change what goes on the wire
    frames = serialize.dumps(value)
    assert frames == [cloudpickle.dumps(value, protocol=5)]
    assert serialize.loads(frames) == value
    assert serialize.loads(frames, lambda pid: pytest.fail(f"no persistent id was pickled, got {pid}")) == value


def test_data_that_is_not_plain_still_goes_through_cloudpickle():
    local = lambda x: x + 1  # noqa: E731 - pickled by value: only cloudpickle can
    assert serialize.loads(serialize.dumps(((local,), {})))[0][0](1) == 2
    arr = np.arange(10_000.0)
    assert len(serialize.dumps((arr,))) == 2  # still out of band
    held = {"r": object()}
    frames = serialize.dumps(("P", "Q", held["r"]), lambda o: ("ref", "r") if o is held["r"] else None)
    assert serialize.loads(frames, lambda pid: held[pid[1]])[2] is held["r"]


@given(st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=10)
                       | st.floats(allow_nan=False, allow_infinity=False), max_size=6))
def test_headers_decode_to_what_was_encoded_and_each_reader_gets_its_own(header):
    raw = P.dump_header(header)
    assert raw == P.dump_header(dict(header))  # encoded once or again: the same bytes
    first = P.load_header(raw)
    first["changed by its reader"] = True
    again = P.load_header(raw)
    assert again == header == json.loads(raw) and "changed by its reader" not in again
    assert [type(v) for v in again.values()] == [type(v) for v in json.loads(raw).values()]


def test_headers_alike_in_value_but_not_in_type_are_not_confused():
    for value in (True, 1, 1.0, "1"):
        assert json.loads(P.dump_header({"k": value}))["k"].__class__ is value.__class__
        assert P.load_header(P.dump_header({"k": value}))["k"].__class__ is value.__class__


def test_a_peer_sending_ever_new_headers_costs_no_memory():
    for i in range(5_000):
        P.load_header(b'{"member":"m%d"}' % i)
        P.dump_header({"member": f"m{i}"})
    assert len(P._seen_headers) <= P._SEEN_COUNT and len(P._dumped_headers) <= P._SEEN_COUNT
