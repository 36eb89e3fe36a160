"""The gateway's socket-free parts: tokens, settings, the OpenAPI document, argument checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import BaseModel

from de_magic.gateway.catalog import check, request_schema
from de_magic.gateway.config import check_exposure, load, parse_bind
from de_magic.gateway.openapi import Documents, document
from de_magic.gateway.problems import Problem
from de_magic.gateway.tokens import Tokens, grant, hash_token, new_token
from de_magic.schema import describe


class Point(BaseModel):
    x: float


class Segment(BaseModel):
    start: Point
    end: Point


def length(segment: Segment, scale: float = 1.0) -> float:
    """The length of a segment."""
    return scale * abs(segment.end.x - segment.start.x)


def tagged(**extra) -> float:
    return 0.0


class Box:
    def __init__(self, side: int = 1):
        self.side = side

    def area(self, times: int) -> int:
        return self.side * self.side * times


def listing(*apis: dict) -> dict:
    return {"broker": {"url": "tcp://127.0.0.1:1"},
            "backends": {api["name"]: {"api": api, "api_tag": str(hash(repr(api))), "workers": []} for api in apis}}


def test_tokens_are_found_by_their_hash_only():
    alice, bob = new_token(), new_token()
    assert alice != bob and len(alice) >= 43  # 256 random bits
    tokens = Tokens([grant("alice", hash_token(alice)), grant("bob", hash_token(bob))])
    assert tokens.check(f"Bearer {alice}").name == "alice"
    assert tokens.check(f"bearer {bob}").name == "bob"
    for header in (None, "", "Bearer ", f"Basic {alice}", f"Bearer {alice}x", f"Bearer {hash_token(alice)}"):
        with pytest.raises(Problem) as caught:
            tokens.check(header)
        assert caught.value.status == 401
    assert Tokens().check(None) is None  # no tokens configured: no authentication
    with pytest.raises(ValueError, match="never the token itself"):
        grant("carol", alice)  # a token pasted where its hash belongs


@given(st.text(min_size=1, max_size=80))
def test_any_other_token_is_refused(guess):
    secret = "s3cret-" + "x" * 40
    tokens = Tokens([grant("alice", hash_token(secret))])
    if guess.strip() != secret:
        with pytest.raises(Problem):
            tokens.check(f"Bearer {guess}")


def test_settings_from_the_config_file_and_flags(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(path))
    path.write_text('[gateway]\nbind = "0.0.0.0:9000"\ntimeout = 5\n'
                    f'[gateway.tokens.alice]\nhash = "{hash_token("t" * 43)}"\nkey = "keys/alice.key_secret"\n')
    config = load()
    assert (config.host, config.port, config.timeout) == ("0.0.0.0", 9000, 5.0)  # public: tokens are configured
    assert config.tokens.grants[0].key == tmp_path / "keys" / "alice.key_secret"  # relative to the file
    assert load(bind="127.0.0.1:9001").port == 9001  # flags win
    path.write_text('[gateway]\nbind = "0.0.0.0:9000"\n')
    with pytest.raises(ValueError, match="without tokens"):
        load()
    path.write_text('[gateway]\nbnd = "127.0.0.1:9000"\n')
    with pytest.raises(ValueError, match="unknown setting.*bnd"):
        load()
    for bad in ("8080", "host:", ":80", "h:99999"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_bind(bad)
    check_exposure("::1", Tokens())  # loopback, IPv6 too


def test_openapi_document_validates_with_models_classes_and_tokens():
    api = describe("geo", {"length": length, "tagged": tagged, "Box": Box})
    for authenticated in (False, True):
        doc = document(listing(api), authenticated)
        validate(doc)
        assert ("security" in doc) is authenticated
    body = doc["paths"]["/backends/geo/length"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # pydantic's $defs moved to the components, the $refs rewritten to them
    assert body["properties"]["segment"]["properties"]["start"]["$ref"] == "#/components/schemas/geo.length.Point"
    assert doc["components"]["schemas"]["geo.length.Point"]["required"] == ["x"] and "$defs" not in body
    assert body["additionalProperties"] is False
    assert "additionalProperties" not in doc["paths"]["/backends/geo/tagged"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]  # it takes **kwargs
    method = doc["paths"]["/backends/geo/Box/area"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(method["properties"]) == {"init", "args"} and method["properties"]["args"]["required"] == ["times"]


def test_the_document_is_made_again_only_when_an_api_changes():
    documents = Documents(authenticated=False)
    first = listing(describe("geo", {"length": length}))
    doc = documents.of(first)
    assert documents.of(listing(describe("geo", {"length": length}))) is doc
    changed = documents.of(listing(describe("geo", {"length": length, "Box": Box})))
    assert changed is not doc and "/backends/geo/Box/area" in changed["paths"]


def test_argument_checks_name_the_failing_field():
    validator = Draft202012Validator(request_schema(describe("geo", {"length": length})["members"]["length"]))
    check(validator, {"segment": {"start": {"x": 0}, "end": {"x": 1}}})
    cases = [({}, "segment"), ({"segment": {"start": {"x": "a"}, "end": {"x": 1}}}, "segment/start/x"),
             ({"segment": {"start": {"x": 0}, "end": {"x": 1}}, "extra": 1}, "extra"),
             ({"segment": {"start": {"x": 0}, "end": {"x": 1}}, "scale": "big"}, "scale")]
    for arguments, field in cases:
        with pytest.raises(Problem) as caught:
            check(validator, arguments)
        assert (caught.value.status, caught.value.extra["field"]) == (422, field)
        assert field in caught.value.detail
