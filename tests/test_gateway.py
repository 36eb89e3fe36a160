"""The HTTP gateway against real brokers, backends and a real gateway process, with a real HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import requests
from openapi_spec_validator import validate

from conftest import HEARTBEAT, Cluster, Processes, curve_keys, free_port, start_logged, wait_for
from labtools import Jupyter
from test_lab_browser import CHROMIUM, open_page, rows
from test_security import client_for

from de_magic.gateway.tokens import hash_token

PROBLEM = "application/problem+json"


def start_gateway(procs: Processes, broker: str, tmp_path, config: str = "", env: dict | None = None) -> str:
    """A gateway process for ``broker`` with ``config`` as its config file; its base URL once it answers."""
    port = free_port()
    path = tmp_path / f"gateway-{port}.toml"
    path.write_text(config)
    procs.start("gateway", "--broker", broker, "--bind", f"127.0.0.1:{port}", env={"DE_MAGIC_CONFIG": str(path), **(env or {})})
    base = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return requests.get(f"{base}/docs", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False
    wait_for(answers, what="the gateway to answer")
    return base


def problem(response: requests.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["kind"] == kind and body["title"] and body["detail"]
    assert body["type"] == f"urn:de-magic:problem:{kind}"
    return body


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A broker with the demo backends, a raising one, a busy one and a no-pickle one, and a gateway
    (1 MB body limit)."""
    from de_magic.embedded import DEMO_BACKENDS

    tmp = tmp_path_factory.mktemp("gateway")
    procs = Processes()
    cluster = Cluster(procs)
    try:
        cluster.start_broker()
        for name, (module, extra) in DEMO_BACKENDS.items():
            cluster.start_backend(module, name, *extra)
        cluster.start_backend("tests/raising_backend.py", "raising")
        cluster.start_backend("de_magic.demo.hello", "full", "--max-queue", "0", "--max-workers", "1")
        cluster.start_backend("de_magic.demo.hello", "strict", "--no-pickle")
        cluster.base = start_gateway(procs, cluster.url, tmp, "[gateway]\nmax_body = 1000000\ntimeout = 30\n")
        yield cluster
    finally:
        cluster.client.close()
        procs.stop_all()


def post(gw, path: str, body=None, **kw) -> requests.Response:
    return requests.post(gw.base + path, json=body, timeout=30, **kw)


def test_calls_answer_json_results(gw):
    assert post(gw, "/backends/hello_world/scale", {"values": [1, 2.5], "factor": 3}).json() == [3.0, 7.5]
    # a class's method: constructor arguments under "init", the method's under "args"
    response = post(gw, "/backends/hello_world/Stats/std", {"init": {"ddof": 1}, "args": {"values": [1, 2, 3]}})
    assert response.status_code == 200 and response.json() == 1.0
    # defaults apply when the body is empty; tables come back in the JSON encoding (docs/json-encoding.md)
    table = requests.post(gw.base + "/backends/hello_world/describe_table", timeout=30).json()
    assert table["__de_magic__"] == "pandas.DataFrame" and table["index"]["values"]["shape"] == [5]
    # tagged values go in as they come out
    array = {"__de_magic__": "ndarray", "dtype": "<f8", "shape": [2], "data": "AAAAAAAA+D8AAAAAAAAEQA=="}
    assert post(gw, "/backends/hello_world/echo", {"value": array}).json() == array


def test_listing_and_openapi_document_validate(gw):
    listing = requests.get(gw.base + "/backends", timeout=30).json()
    assert {"hello_world", "ocean_model", "raising"} <= set(listing["backends"])
    doc = requests.get(gw.base + "/openapi.json", timeout=30).json()
    validate(doc)  # OpenAPI 3.1, by openapi-spec-validator
    post_scale = doc["paths"]["/backends/hello_world/scale"]["post"]
    body = post_scale["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["factor"]["maximum"] == 10 and body["required"] == ["values"]
    assert post_scale["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    assert "/backends/hello_world/Stats/std" in doc["paths"] and "/backends/hello_world/slow_sum/jobs" in doc["paths"]
    assert {"/backends", "/jobs/{id}", "/jobs/{id}/events"} <= set(doc["paths"])
    page = requests.get(gw.base + "/docs", timeout=30)
    assert page.status_code == 200 and "openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # bundled: nothing from a CDN


def test_openapi_is_regenerated_when_the_backends_change(gw):
    before = requests.get(gw.base + "/openapi.json", timeout=30).json()
    assert "/backends/late/echo" not in before["paths"]
    proc = gw.start_backend("de_magic.demo.hello", "late")
    try:
        def listed():
            doc = requests.get(gw.base + "/openapi.json", timeout=30).json()
            return "/backends/late/echo" in doc["paths"]
        wait_for(listed, timeout=10, what="the new backend in openapi.json")
    finally:
        proc.terminate()
        proc.wait(10)


def test_error_statuses_are_problem_documents(gw):
    problem(post(gw, "/backends/nobody/echo", {}), 404, "unknown_backend")
    problem(post(gw, "/backends/hello_world/nothing", {}), 404, "unknown_method")
    problem(post(gw, "/backends/hello_world/Stats/nothing", {}), 404, "unknown_method")
    problem(requests.get(gw.base + "/nowhere", timeout=30), 404, "not_found")
    problem(requests.get(gw.base + "/jobs/hello_world:00ff:abc", timeout=30), 404, "job")
    bad = problem(post(gw, "/backends/hello_world/scale", {"values": [1], "factor": 30}), 422, "invalid")
    assert bad["field"] == "factor" and "maximum" in bad["detail"]
    assert problem(post(gw, "/backends/hello_world/scale", {}), 422, "invalid")["field"] == "values"
    assert problem(post(gw, "/backends/hello_world/scale", {"values": [1], "x": 1}), 422, "invalid")["field"] == "x"
    assert problem(post(gw, "/backends/hello_world/Stats/std", {"init": {"ddof": "a"}, "args": {"values": []}}),
                   422, "invalid")["field"] == "init/ddof"
    # a value the schema lets through (any JSON) that the backend cannot decode: the member never ran
    bad_array = {"__de_magic__": "ndarray", "dtype": "<f8", "shape": [1], "data": "not base64"}
    assert "malformed ndarray" in problem(post(gw, "/backends/hello_world/echo", {"value": bad_array}), 422,
                                          "invalid")["detail"]
    raised = problem(post(gw, "/backends/raising/fail_with_code", {"code": 7}), 502, "remote")
    assert raised["remote_type"].endswith("NeedsKeywords") and "fail_with_code" in raised["traceback"]
    # one place and no queue: while a job runs there, the next has nowhere to wait
    running = post(gw, "/backends/full/slow_sum/jobs", {"n": 200, "delay": 0.05})
    assert running.status_code == 202, running.text
    problem(post(gw, "/backends/full/slow_sum/jobs", {"n": 1}), 503, "busy")
    requests.delete(gw.base + running.headers["Location"], timeout=30)
    problem(post(gw, "/backends/hello_world/slow_sum?timeout=0.3", {"n": 40, "delay": 0.05}), 504, "timeout")
    big = requests.post(gw.base + "/backends/hello_world/echo", data=b'{"value": "' + b"x" * 1_100_000 + b'"}',
                        timeout=30)
    problem(big, 413, "too_large")
    problem(requests.get(gw.base + "/backends/hello_world/scale", timeout=30), 405, "method")


def test_a_lost_backend_is_503(gw):
    proc = gw.start_backend("de_magic.demo.hello", "doomed")
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(r=post(gw, "/backends/doomed/slow_sum", {"n": 400, "delay": 0.05})))
    thread.start()
    wait_for(lambda: any(w.get("busy") for w in gw.workers("doomed")), what="the call to run")
    proc.kill()
    thread.join(30)
    problem(answer["r"], 503, "lost")


def test_a_job_is_followed_to_its_end_through_server_sent_events(gw):
    started = post(gw, "/backends/hello_world/slow_sum/jobs", {"n": 6, "delay": 0.05})
    assert started.status_code == 202
    job = started.json()
    assert started.headers["Location"] == f"/jobs/{job['id']}" and job["status"] in ("queued", "running")
    events = []
    with requests.get(gw.base + started.headers["Location"] + "/events", stream=True, timeout=30) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [name for name, _ in events]
    assert names[-1] == "end" and names[-2] == "status" and events[-2][1] == {"status": "done"} and "progress" in names
    assert events[-1][1]["status"] == "done" and events[-1][1]["result"] == sum(range(6))
    assert max(data["n"] for name, data in events if name == "progress") == 6
    document = requests.get(gw.base + f"/jobs/{job['id']}", timeout=30).json()
    assert document["status"] == "done" and document["result"] == 15
    assert requests.delete(gw.base + f"/jobs/{job['id']}", timeout=30).json() == {"id": job["id"], "cancelled": False}


def test_a_no_pickle_backend_serves_calls_and_jobs(gw):
    assert post(gw, "/backends/strict/scale", {"values": [2], "mode": "divide"}).json() == [1.0]
    job = post(gw, "/backends/strict/Stats/mean/jobs", {"args": {"values": [1, 2, 6]}})
    assert job.status_code == 202
    location = gw.base + job.headers["Location"]
    wait_for(lambda: requests.get(location, timeout=30).json()["status"] == "done", timeout=10, what="the job")
    assert requests.get(location, timeout=30).json()["result"] == 3.0


def test_a_running_job_is_cancelled(gw):
    job = post(gw, "/backends/hello_world/slow_sum/jobs", {"n": 200, "delay": 0.05}).json()
    assert requests.delete(gw.base + f"/jobs/{job['id']}", timeout=30).json()["cancelled"] is True
    wait_for(lambda: requests.get(gw.base + f"/jobs/{job['id']}", timeout=30).json()["status"] == "cancelled",
             timeout=10, what="the job to be cancelled")
    document = requests.get(gw.base + f"/jobs/{job['id']}", timeout=30).json()
    assert document["error"]["kind"] == "cancelled" and document["error"]["status"] == 409


def test_a_public_bind_without_tokens_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("")
    done = subprocess.run([sys.executable, "-m", "de_magic", "gateway", "--bind", f"0.0.0.0:{free_port()}"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "DE_MAGIC_CONFIG": str(path)})
    assert done.returncode != 0 and "refusing to serve HTTP on 0.0.0.0" in done.stderr
    assert "gateway on" not in done.stdout


# -- tokens over a CURVE broker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_gw(tmp_path_factory):
    """A CURVE broker with backends 'open' and 'private' (alice only), and a gateway with tokens for alice and
    bob, each calling with their own key pair."""
    tmp = tmp_path_factory.mktemp("curve-gateway")
    keys = curve_keys(tmp)
    procs = Processes()
    cluster = Cluster(procs)
    cluster.keys = keys
    cluster.client = client_for(cluster, "alice")
    try:
        cluster.broker = start_logged(procs, "broker", "--bind", cluster.url, "--heartbeat", str(HEARTBEAT),
                                      "--key", str(keys["broker"]), "--allowed-keys", str(keys["allowed"]),
                                      log=tmp / "broker.log")
        wait_for(cluster._answers, what="CURVE broker")
        env = {"DE_MAGIC_KEY": str(keys["backend"]), "DE_MAGIC_BROKER_KEY": str(keys["broker.public"])}
        cluster.start_backend("de_magic.demo.hello", "open", env=env)
        cluster.start_backend("de_magic.demo.hello", "private", "--allow-clients", "alice", env=env)
        cluster.tokens = {"alice": "alice-token-" + "a" * 30, "bob": "bob-token-" + "b" * 30}
        config = f'[brokers."{cluster.url}"]\nbroker_key = "{keys["broker.public"]}"\n\n[gateway]\n' + "".join(
            f'[gateway.tokens.{name}]\nhash = "{hash_token(token)}"\nkey = "{keys[name]}"\n'
            for name, token in cluster.tokens.items())
        cluster.base = start_gateway(procs, cluster.url, tmp, config)
        yield cluster
    finally:
        cluster.client.close()
        procs.stop_all()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_refused_accepted_and_judged_by_allow_clients(curve_gw):
    base, tokens = curve_gw.base, curve_gw.tokens
    url = base + "/backends/private/scale"
    response = requests.post(url, json={"values": [1]}, timeout=30)
    problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem(requests.post(url, json={"values": [1]}, headers=bearer("guessed-" + "x" * 30), timeout=30), 401,
            "unauthorized")
    problem(requests.get(base + "/openapi.json", timeout=30), 401, "unauthorized")
    # alice's key is allowed by 'private', bob's is not: the backend decides, as for a Python caller
    assert requests.post(url, json={"values": [1]}, headers=bearer(tokens["alice"]), timeout=30).json() == [2.0]
    refused = problem(requests.post(url, json={"values": [1]}, headers=bearer(tokens["bob"]), timeout=30), 403, "refused")
    assert "private" in refused["detail"]
    assert requests.post(base + "/backends/open/scale", json={"values": [1]}, headers=bearer(tokens["bob"]),
                         timeout=30).json() == [2.0]
    doc = requests.get(base + "/openapi.json", headers=bearer(tokens["bob"]), timeout=30).json()
    validate(doc)
    assert doc["security"] == [{"bearer": []}]


# -- from JavaScript in a real browser --------------------------------------------------------------


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_javascript_fetch_in_chromium_and_the_docs_page(gw):
    with open_page() as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))  # the page's script fails nowhere
        page.goto(gw.base + "/docs")
        # the page renders the live document with its bundled script: a route per member
        page.wait_for_selector("code:text-is(\"/backends/hello_world/scale\")")
        assert "routes" in page.inner_text("#status")
        # a web page calls a demo member with fetch, and reads a problem document
        result = page.evaluate("""async () => {
            const ok = await fetch("/backends/hello_world/scale", {method: "POST",
                headers: {"Content-Type": "application/json"}, body: JSON.stringify({values: [1, 2], factor: 4})});
            const bad = await fetch("/backends/hello_world/scale", {method: "POST", body: "{}"});
            return {status: ok.status, value: await ok.json(), problem: await bad.json(),
                    type: bad.headers.get("Content-Type")};
        }""")
        assert result["status"] == 200 and result["value"] == [4.0, 8.0]
        assert result["problem"]["status"] == 422 and result["problem"]["field"] == "values"
        assert result["type"] == PROBLEM
        assert not errors, errors


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_sidebar_shows_the_http_route_and_a_curl_line_that_works(gw, tmp_path):
    from playwright.sync_api import expect

    config = tmp_path / "config.toml"
    config.write_text(f'[gateway]\nbind = "{gw.base.removeprefix("http://")}"\n')
    with Jupyter(tmp_path, lab=True, env={"DE_MAGIC_BROKER": gw.url, "DE_MAGIC_CONFIG": str(config)}) as lab, \
            open_page() as page:
        page.goto(lab.lab_url())
        page.locator('.jp-SideBar [data-id="de-magic-backends"]').click()
        hello_row = rows(page, "backend").filter(has_text="hello_world")
        hello_row.click()
        details = page.locator("#de-magic-backends .jp-DeMagic-details")
        # a backend's details: its route, with a curl line of its first function
        expect(details.locator(".jp-DeMagic-http")).to_have_text(f"POST {gw.base}/backends/hello_world/compute_sum")
        hello_row.locator(".jp-DeMagic-caret").click()
        rows(page, "function").filter(has_text="scale").click()
        expect(details.locator(".jp-DeMagic-http")).to_have_text(f"POST {gw.base}/backends/hello_world/scale")
        expect(details.get_by_role("button", name="Copy curl")).to_be_visible()
        curl = details.locator(".jp-DeMagic-curl").inner_text()
    # the line as a user pastes it: the required arguments filled in, and it calls the member
    assert curl.startswith("curl ") and '{"values":[]}' in curl
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr


def test_new_token_prints_a_token_and_its_hash(tmp_path):
    done = subprocess.run([sys.executable, "-m", "de_magic", "gateway", "--new-token", "carol"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "DE_MAGIC_CONFIG": str(tmp_path / "c.toml")})
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    token = lines[lines.index("") + 1]
    assert f'hash = "{hash_token(token)}"' in lines and "[gateway.tokens.\"carol\"]" in lines


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make a certificate")
def test_https_by_the_gateway_itself(gw, tmp_path):
    cert, key = tmp_path / "gw.pem", tmp_path / "gw-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    procs = Processes()
    try:
        port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(f'[gateway]\ncertfile = "{cert.name}"\nkeyfile = "{key.name}"\n')
        procs.start("gateway", "--broker", gw.url, "--bind", f"127.0.0.1:{port}", env={"DE_MAGIC_CONFIG": str(config)})

        def answers():
            try:
                return requests.post(f"https://127.0.0.1:{port}/backends/hello_world/scale", json={"values": [1]},
                                     verify=str(cert), timeout=5).json()
            except requests.ConnectionError:
                return None
        assert wait_for(answers, what="the gateway over HTTPS") == [2.0]
    finally:
        procs.stop_all()
