"""Access control of the node's API, in process: the token on every mutating route, Host and Origin
checks, gRPC's UNAUTHENTICATED, and the token's way from `orbitmesh up` to the CLI and the SDK."""

import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import trio
import tritonclient.grpc as tg
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from agent.serve import auth
from agent.serve.api import build_app
from agent.serve.auth import AccessPolicy, AgentAuth, HostPolicy
from agent.runtime.node import SubmitError
from tests.conftest import free_port_block

TOKEN = "t" * 43
GOOD = {"Authorization": f"Bearer {TOKEN}"}

# Every mutating route family of the API (v1 and the Open Inference Protocol over HTTP).
MUTATING = [
    ("POST", "/v1/tasks", {"json": {"model": "digits", "inputs": {}}}),
    ("PUT", "/v1/models/double", {"content": b"onnx"}),
    ("POST", "/v1/chaos", {"json": {"kind": "cut", "a": "sat-0", "b": "sat-1"}}),
    ("DELETE", "/v1/chaos", {}),
    ("DELETE", "/v1/chaos/f1", {}),
    ("POST", "/v1/probe", {"json": {"peer": "sat-1"}}),
    ("POST", "/v2/models/digits/infer", {"json": {"inputs": []}}),
    ("POST", "/v2/models/digits/versions/1/infer", {"json": {"inputs": []}}),
    ("POST", "/v2/repository/index", {"json": {}}),
    ("POST", "/v2/repository/models/digits/load", {"json": {}}),
    ("POST", "/v2/repository/models/digits/unload", {"json": {}}),
]
READS = ["/v1/health", "/v1/node", "/v1/membership", "/v1/chaos", "/v2/health/live", "/v2"]


class StubNode:
    """Just enough of a Node for the routes; records every handler that ran."""

    def __init__(self):
        self.calls = []
        self.me = SimpleNamespace(name="sat-0")
        self.config = SimpleNamespace(limits=SimpleNamespace(max_body_bytes=1 << 20))
        self.store = SimpleNamespace(max_model_bytes=1 << 20, names=lambda: [],
                                     has=lambda *a: self._note("store.has") or False)
        self.chaos = SimpleNamespace(listing=lambda t: [])
        self.executor = SimpleNamespace(retry_after_s=lambda: 1)

    def _note(self, what):
        self.calls.append(what)

    def health(self):
        return {"node": "sat-0", "status": "ok", "ready": True}

    def describe(self):
        return {"node": "sat-0"}

    def describe_membership(self):
        return {"members": []}

    async def submit(self, *a, **kw):
        self._note("submit")
        raise SubmitError(404, "unknown model 'digits'")

    def apply_fault(self, spec):
        self._note("apply_fault")
        return {"id": "f1"}, True

    def clear_fault(self, fid):
        self._note("clear_fault")
        return 0

    def start_probe(self, *a):
        self._note("start_probe")
        return {"probe": "started"}


def client(policy=AccessPolicy(TOKEN), host="127.0.0.1:8100"):
    node = StubNode()
    app = build_app(node, policy)
    return node, TestClient(app, base_url=f"http://{host}", backend="trio", raise_server_exceptions=False)


@pytest.mark.parametrize("method,path,kw", MUTATING, ids=[f"{m} {p}" for m, p, _ in MUTATING])
def test_every_mutating_route_needs_the_token(method, path, kw):
    node, c = client()
    missing = c.request(method, path, **kw)
    assert missing.status_code == 401, missing.text
    assert "missing bearer token" in missing.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = c.request(method, path, headers={"Authorization": "Bearer " + "x" * 43}, **kw)
    assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["error"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = c.request(method, path, headers={"Authorization": f"Basic {TOKEN}"}, **kw)
    assert basic.status_code == 401
    assert node.calls == []                     # no handler ran for any of them
    ok = c.request(method, path, headers=GOOD, **kw)
    assert ok.status_code not in (401, 403), ok.text


def test_the_right_token_reaches_the_handlers():
    node, c = client()
    assert c.post("/v1/chaos", json={"kind": "cut"}, headers=GOOD).status_code == 201
    assert c.delete("/v1/chaos/f1", headers=GOOD).json() == {"cleared": 0}
    assert c.post("/v1/probe", json={"peer": "sat-1"}, headers=GOOD).status_code == 202
    r = c.post("/v1/tasks", json={"model": "digits", "inputs": {}}, headers=GOOD)
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    assert node.calls == ["apply_fault", "clear_fault", "start_probe", "submit"]


@pytest.mark.parametrize("path", READS)
def test_reads_stay_open(path):
    _, c = client()
    assert c.get(path).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8100", "localhost.evil.example", "sat-0.attacker.net"])
def test_a_foreign_host_is_refused_even_for_reads(host):
    """DNS rebinding: the attacker's name resolves to the node, the browser sends that name as Host."""
    _, c = client()
    for r in (c.get("/v1/membership", headers={"Host": host}),
              c.post("/v1/chaos", json={"kind": "cut"}, headers={**GOOD, "Host": host})):
        assert r.status_code == 400 and "not an allowed name" in r.json()["error"]


@pytest.mark.parametrize("host", ["localhost:8100", "127.0.0.1:8100", "[::1]:8100", "10.0.3.7:8080", "sat-3:8080",
                                  "orbitmesh-7.orbitmesh:8080", "tasks.sat:8080", "LOCALHOST", "api.lab.example"])
def test_own_fleet_and_configured_names_are_allowed(host):
    policy = AgentAuth(TOKEN, allow_hosts=("*.lab.example",)).policy(
        ["sat-3", "orbitmesh-7.orbitmesh", "tasks.sat"])
    _, c = client(policy)
    assert c.get("/v1/node", headers={"Host": host}).status_code == 200
    assert c.post("/v1/chaos", json={"kind": "cut"}, headers={**GOOD, "Host": host}).status_code == 201


def test_allowed_hosts_from_the_environment(monkeypatch):
    monkeypatch.setenv(auth.ALLOWED_HOSTS_ENV, "console.example, other.example")
    policy = AgentAuth(TOKEN).policy([])
    assert policy.hosts.allows("console.example") and policy.hosts.allows("other.example")
    assert not policy.hosts.allows("third.example")
    with pytest.raises(ValueError, match="wildcard"):
        HostPolicy.of(["evil*.example"])


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1:8100"])
def test_cross_origin_control_is_refused_even_with_the_token(origin):
    node, c = client()
    # the classic CSRF: a page's form or fetch() with a "simple" content type
    r = c.post("/v1/chaos", content=b'{"kind":"cut","a":"sat-0","b":"sat-1"}',
               headers={**GOOD, "Origin": origin, "Content-Type": "text/plain"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    assert node.calls == []
    assert c.get("/v1/node", headers={"Origin": origin}).status_code == 200      # reads: no CORS headers, unreadable


def test_same_origin_allowed_origin_and_sec_fetch_site():
    node, c = client(AccessPolicy(TOKEN, origins=frozenset({"https://console.example"})))
    assert c.post("/v1/chaos", json={}, headers={**GOOD, "Origin": "http://127.0.0.1:8100"}).status_code == 201
    assert c.post("/v1/chaos", json={}, headers={**GOOD, "Origin": "https://console.example"}).status_code == 201
    r = c.post("/v1/chaos", json={}, headers={**GOOD, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert node.calls == ["apply_fault", "apply_fault"]


def test_an_open_lab_takes_control_calls_without_a_token_but_still_checks_host_and_origin(caplog):
    node, c = client(AccessPolicy(None))
    assert c.post("/v1/chaos", json={}).status_code == 201
    assert c.post("/v1/chaos", json={}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert c.get("/v1/node", headers={"Host": "evil.example"}).status_code == 400
    with caplog.at_level("WARNING"):
        auth.warn_open("sat-0")
    assert "authentication is OFF" in caplog.text


def test_token_comparison_and_parsing():
    assert auth.token_matches(TOKEN, f"Bearer {TOKEN}") and auth.token_matches(TOKEN, f"bearer  {TOKEN} ")
    assert not auth.token_matches(TOKEN, None) and not auth.token_matches(TOKEN, f"Bearer {TOKEN}x")
    assert not auth.token_matches(TOKEN, "Bearer ") and not auth.token_matches(TOKEN, TOKEN)
    assert auth.split_host("[::1]:8100") == "::1" and auth.split_host("Sat-3:8080") == "sat-3"
    assert auth.split_host("a b") is None and auth.split_host("evil.example@127.0.0.1:8100") is None
    assert auth.split_host("127.0.0.1/x") is None and auth.split_host("localhost.") == "localhost"


# -- where the token comes from --------------------------------------------------------------

def test_ensure_token_makes_a_private_file_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    path = tmp_path / "fleet" / "token"
    first = auth.ensure_token(path)
    assert len(first) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.ensure_token(path) == first                          # kept across up/down
    monkeypatch.setenv(auth.TOKEN_ENV, "chosen-by-the-operator-123")
    assert auth.ensure_token(path) == "chosen-by-the-operator-123" == path.read_text().strip()
    monkeypatch.setenv(auth.TOKEN_ENV, "short")
    with pytest.raises(auth.TokenError, match="16"):
        auth.ensure_token(path)


def test_client_token_order(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    assert auth.client_token(tmp_path) is None
    auth.write_token(tmp_path / "token", "from-the-fleet-dir-0001")
    assert auth.client_token(tmp_path) == "from-the-fleet-dir-0001"
    monkeypatch.setattr(auth, "_fleet_dir", [tmp_path])               # the CLI's --dir
    assert auth.client_token() == "from-the-fleet-dir-0001"
    auth.write_token(tmp_path / "other", "from-a-token-file-0002")
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(tmp_path / "other"))
    assert auth.client_token(tmp_path) == "from-a-token-file-0002"
    monkeypatch.setenv(auth.TOKEN_ENV, "from-the-environment-03")
    assert auth.client_token(tmp_path) == "from-the-environment-03"


def test_agent_needs_a_token_or_an_explicit_opt_out(tmp_path, monkeypatch):
    from agent.ops.cli import main
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    assert main(["agent", "--sat", "0", "--config", str(tmp_path / "c.toml"), "--data-dir", str(tmp_path)]) == 2
    with pytest.raises(auth.TokenError, match="--no-auth"):
        auth.agent_token(None)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(auth.TokenError, match="16"):
        auth.agent_token(tmp_path / "empty")
    auth.write_token(tmp_path / "tok", TOKEN)
    assert auth.agent_token(tmp_path / "tok") == TOKEN


async def test_sdk_sends_the_token_it_finds(tmp_path, monkeypatch):
    from agent.client import Client
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    async with Client("http://127.0.0.1:1") as c:
        assert c._http.headers["authorization"] == f"Bearer {TOKEN}"
    async with Client("http://127.0.0.1:1", token="explicit-token-000001") as c:
        assert c._http.headers["authorization"] == "Bearer explicit-token-000001"
    async with Client("http://127.0.0.1:1", token="") as c:
        assert "authorization" not in c._http.headers


def test_local_fleet_writes_the_token_and_hands_it_to_every_agent(tmp_path, monkeypatch):
    from agent.ops.fleet import FleetSpec, agent_command, prepare
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    base = free_port_block(12)      # prepare() checks each port is free: fixed ports raced other sockets
    spec = FleetSpec(directory=tmp_path / "f", n=4, p2p_base_port=base, api_base_port=base + 4,
                     grpc_base_port=base + 8)
    prepare(spec)
    token = (tmp_path / "f" / "token").read_text().strip()
    assert len(token) >= 40 and stat.S_IMODE((tmp_path / "f" / "token").stat().st_mode) == 0o600
    cmd = agent_command(spec, "sat-1")
    assert cmd[cmd.index("--api-token-file") + 1] == str(tmp_path / "f" / "token") and "--no-auth" not in cmd
    open_lab = FleetSpec(directory=tmp_path / "g", auth=False)
    assert "--no-auth" in agent_command(open_lab, "sat-1") and "--api-token-file" not in agent_command(open_lab, "sat-1")


# -- gRPC ---------------------------------------------------------------------------------

async def test_grpc_inference_needs_the_token_in_metadata():
    from agent.serve.kserve_grpc import serve_grpc

    class Service:
        def live(self):
            return True

        def check_known(self, name, version):
            pass

        async def infer(self, name, version, req):
            return {"y": np.ones(2, np.float32)}, {"executor": "here"}

        def unload(self, name):
            pass

    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_grpc(
            Service(), "127.0.0.1", 0, max_message_bytes=1 << 20, token=TOKEN, task_status=task_status))
        c = tg.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tg.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.zeros(1, np.float32))

        def calls():
            out = {"live": c.is_server_live()}
            for what, fn in (("infer", lambda h: c.infer("m", [inp], headers=h)),
                             ("unload", lambda h: c.unload_model("m", headers=h))):
                for label, h in (("none", None), ("wrong", {"authorization": "Bearer " + "x" * 43})):
                    with pytest.raises(InferenceServerException) as e:
                        fn(h)
                    out[f"{what}-{label}"] = (str(e.value.status()), e.value.message())
            out["infer-ok"] = c.infer("m", [inp], headers={"authorization": f"Bearer {TOKEN}"}).as_numpy("y")
            c.unload_model("m", headers={"authorization": f"Bearer {TOKEN}"})
            return out
        out = await trio.to_thread.run_sync(calls)
        nursery.cancel_scope.cancel()
    assert out["live"] is True
    for k in ("infer-none", "infer-wrong", "unload-none", "unload-wrong"):
        assert out[k][0] == "StatusCode.UNAUTHENTICATED", out[k]
    assert "missing bearer token" in out["infer-none"][1] and "wrong bearer token" in out["infer-wrong"][1]
    np.testing.assert_array_equal(out["infer-ok"], np.ones(2, np.float32))


def test_env_token_reaches_the_test_session():
    """conftest's session token is what fleets started by the suite use."""
    assert os.environ[auth.TOKEN_ENV]


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orbitmesh test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


async def test_tls_serves_the_api_over_https_with_the_same_checks(tmp_path):
    import ssl

    import httpx

    from agent.serve.api import serve_api
    cert, key = _self_signed(tmp_path)
    node = StubNode()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_api, node, "127.0.0.1", 0, AccessPolicy(TOKEN), (cert, key))
        url = next(b for b in binds if b.startswith("https://"))
        ctx = ssl.create_default_context(cafile=cert)
        async with httpx.AsyncClient(base_url=url, verify=ctx) as http:
            assert (await http.get("/v1/health")).json()["status"] == "ok"
            assert (await http.post("/v1/chaos", json={})).status_code == 401
            assert (await http.post("/v1/chaos", json={}, headers=GOOD)).status_code == 201
            same = await http.post("/v1/chaos", json={}, headers={**GOOD, "Origin": url})        # https origin
            assert same.status_code == 201, same.text
        nursery.cancel_scope.cancel()
    assert node.calls == ["apply_fault", "apply_fault"]


def test_an_open_lab_fleet_says_so_and_takes_control_calls_without_a_token(tmp_path, models_dir):
    import httpx

    from tests.conftest import free_port_block, local_fleet
    with local_fleet(tmp_path / "lab", models_dir, 2, auth=False) as (spec, _, peers, _):
        assert not (tmp_path / "lab" / "token").exists()
        r = httpx.post(peers["sat-0"].api + "/v1/chaos", json={"kind": "cut", "a": "sat-0", "b": "sat-1",
                                                               "duration_s": 1})
        assert r.status_code == 201, r.text
        r = httpx.post(peers["sat-0"].api + "/v1/chaos", json={}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
    log = (tmp_path / "lab" / "logs" / "sat-0.log").read_text()
    assert "authentication is OFF" in log and "OPEN: no token needed" in log


def test_the_satellites_of_a_host_share_one_host_policy():
    """Each satellite names the whole fleet's hosts: one set of names per process, not one each."""
    fleet = [f"sat-{i}" for i in range(50)]
    one, other = AgentAuth(None).policy(fleet), AgentAuth("t" * 32).policy(list(fleet))
    assert one.hosts is other.hosts and "sat-7" in one.hosts.names
    assert AgentAuth(None).policy(fleet[:3]).hosts is not one.hosts
