"""Joining: a token and a CSR give a node certificate; bad tokens are refused with a reason and exit 2; a bad name
or CSR is refused without spending the token; failed joins are throttled."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.pki import make_csr, new_key
from gateway.registry.app import JOIN_FAILURES, JOIN_TOKEN_FAILURES
from gateway.uplink.join import client_ssl_context, parse_token
from gateway.uplink.join import join as registry_join
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop


def test_join_issues_a_node_certificate_and_uses_it_for_mutual_tls(registry: Registry, tmp_path: Path) -> None:
    token = registry.token("--labels", "site=north")
    result = join(registry, token, tmp_path / "gw", "--name", "gw-a")
    assert result.returncode == 0, result.stderr
    assert "as node gw-a" in result.stdout
    directory = tmp_path / "gw" / "registry"
    assert {p.name for p in directory.iterdir()} == {"ca.pem", "node.pem", "node.key", "registry.json"}
    assert json.loads((directory / "registry.json").read_text())["node"] == "gw-a"
    assert (directory / "node.key").stat().st_mode & 0o077 == 0

    with httpx.Client(verify=client_ssl_context(tmp_path / "gw"), timeout=10) as client:
        answer = client.post(f"{registry.url}/api/v1/heartbeat", json={"info": {"version": "9.9"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["node"] == "gw-a"
    node = registry.nodes()["gw-a"]
    assert node["status"] == "healthy" and node["version"] == "9.9" and node["labels"] == {"site": "north"}

    # without a client certificate every route but join is refused
    with httpx.Client(verify=ssl.create_default_context(cafile=directory / "ca.pem"), timeout=10) as client:
        assert client.post(f"{registry.url}/api/v1/heartbeat", json={}).status_code == 401

    registry.cli("nodes", "remove", "gw-a")
    with httpx.Client(verify=client_ssl_context(tmp_path / "gw"), timeout=10) as client:
        refused = client.post(f"{registry.url}/api/v1/heartbeat", json={})
    assert refused.status_code == 403 and "revoked" in refused.text


def test_bad_tokens_are_refused_with_the_reason(registry: Registry, tmp_path: Path) -> None:
    used = registry.token("--max-uses", "1")
    assert join(registry, used, tmp_path / "first").returncode == 0
    expired = registry.token("--ttl", "0s")
    revoked = registry.token()
    registry.cli("join-token", "revoke", revoked.split(".")[0])
    unknown = "deadbeef.nosecret." + used.split(".")[2]
    wrong_secret = ".".join([revoked.split(".")[0], "x", used.split(".")[2]])
    for token, reason in ((used, "used up"), (expired, "expired"), (revoked, "revoked"), (unknown, "unknown"),
                          (wrong_secret, "unknown")):
        result = join(registry, token, tmp_path / reason)
        assert result.returncode == 2, (reason, result.stderr)
        assert result.stderr.strip() == f"fieldgate join: token refused: {reason}"
        assert not (tmp_path / reason / "registry").exists()


def test_a_token_for_another_ca_is_refused(registry: Registry, tmp_path: Path) -> None:
    token_id, secret, _ = registry.token().split(".")
    result = join(registry, f"{token_id}.{secret}.{'0' * 64}", tmp_path / "gw")
    assert result.returncode == 2
    assert "does not match the token's fingerprint" in result.stderr


def trust(registry: Registry, address: str = "127.0.0.1") -> httpx.Client:
    """A client of the registry (its CA trusted, no client certificate) calling from a loopback `address`."""
    context = ssl.create_default_context(cafile=str(registry.data_dir / "ca.pem"))
    return httpx.Client(base_url=registry.url, timeout=10,
                        transport=httpx.HTTPTransport(verify=context, local_address=address))


def join_body(token: str, name: str | None = None, csr: str | None = None) -> dict[str, str | None]:
    """The body of POST /api/v1/join for a token as `join-token create` prints it."""
    return {"token": parse_token(token)[0], "csr": csr if csr is not None else make_csr(new_key()), "name": name}


BAD_NAMES = ["../../etc", "a/b", "self", "batch:line1", "gw\u2010a", "GW-A", "<script>", "gw-a\ngw-b healthy",
             "gw\x00a", "a" * 64, "x" * 5000, "-gw", "gw-", "gw..a", "gw.-a", "", " gw", "gw_a", "gw a"]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """A registry on SQLite and one on PostgreSQL (which refuses a NUL in any text it stores)."""
    server = Registry(tmp_path / "registry", request.getfixturevalue("pg_database")
                      if request.param == "postgresql" else None)
    server.start()
    yield server
    if server.process is not None:
        stop(server.process)


def test_a_bad_node_name_is_refused_with_the_rule_and_spends_nothing(any_registry: Registry) -> None:
    registry = any_registry
    token = registry.token("--max-uses", "1")
    with trust(registry, "127.0.3.1") as client:  # nor is a token id with a NUL or a newline a 500
        for token_id in ("\x00", "a\nb"):
            answer = client.post("/api/v1/join", json={"token": f"{token_id}.x", "csr": make_csr(new_key())})
            assert answer.status_code == 403 and answer.json()["detail"] == "unknown", answer.text
    for number, name in enumerate(BAD_NAMES):
        with trust(registry, f"127.0.2.{number + 1}") as client:  # one address each: failed joins are throttled
            answer = client.post("/api/v1/join", json=join_body(token, name))
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        detail = answer.json()["detail"]
        assert detail.startswith("name "), (name, detail)
        assert ("reserved" if name == "self" else "lowercase letters, digits, '-' and '.'") in detail, detail
    with trust(registry) as client:
        longest = "a" + "-b" * 31  # 63 characters: the longest name, as long as a certificate's common name allows
        answer = client.post("/api/v1/join", json=join_body(token, longest))
        assert answer.status_code == 200, answer.text
        assert answer.json()["node"] == longest
    assert list(registry.nodes()) == [longest]
    assert registry.cli("nodes").stdout.count("\n") == 1  # no forged line in the list
    audit = registry.cli("audit").stdout
    assert audit.count("\n") == 1 + 2 + len(BAD_NAMES) + 1 and "node/-" in audit and "\x00" not in audit


def test_fieldgate_join_refuses_a_bad_name_before_sending(tmp_path: Path) -> None:
    nowhere = f"https://127.0.0.1:{free_port()}"  # nothing listens: a name sent would fail with "cannot reach"
    token = f"abcd.secret.{'0' * 64}"
    for name in ("a/b", "self", "GW-A", "a" * 64):
        with pytest.raises(ConfigError, match=r"^--name .*(lowercase letters|reserved)"):
            asyncio.run(registry_join(nowhere, token, tmp_path / "gw", name=name))
    result = subprocess.run([*FIELDGATE, "join", "--registry", nowhere, "--token", token, "--name", "../../etc",
                             "--data-dir", str(tmp_path / "gw")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("fieldgate join: --name '../../etc': "), result.stderr
    assert not (tmp_path / "gw").exists()


def test_a_refused_join_spends_no_use_of_the_token(registry: Registry, tmp_path: Path) -> None:
    assert join(registry, registry.token(), tmp_path / "first", "--name", "gw-a").returncode == 0
    registry.cli("group", "create", "north", "--selector", "site=north")
    registry.cli("group", "create", "everyone", "--selector", "site=north")
    conflicting = registry.token("--max-uses", "1", "--labels", "site=north")
    token = registry.token("--max-uses", "1")
    with trust(registry) as client:
        for body, status, words in (
                (join_body(token, "gw-b", csr="nonsense"), 400, "csr: not a PEM certificate request"),
                (join_body(token, "gw-b", csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                                             "-----END CERTIFICATE REQUEST-----\n"), 400, "csr: "),
                (join_body(token, "gw-a"), 409, "node name gw-a is taken"),
                (join_body(token, "Bad/Name"), 400, "name 'Bad/Name'"),
                (join_body(conflicting, "gw-c"), 409, "match groups everyone, north")):
            answer = client.post("/api/v1/join", json=body)
            assert answer.status_code == status, answer.text
            assert words in answer.json()["detail"]
        assert client.post("/api/v1/join", json=join_body(token, "gw-b")).status_code == 200
        used = client.post("/api/v1/join", json=join_body(token, "gw-d"))
        assert used.status_code == 403 and used.json()["detail"] == "used up"
    assert sorted(registry.nodes()) == ["gw-a", "gw-b"]


def test_failed_joins_are_throttled_per_address_and_per_token(registry: Registry) -> None:
    good = registry.token("--max-uses", "5")
    guessed = registry.token()
    token_id, _, fingerprint = guessed.split(".")
    wrong = f"{token_id}.wrong-secret.{fingerprint}"
    with trust(registry, "127.0.0.2") as client:  # one address guessing
        answers = [client.post("/api/v1/join", json=join_body(wrong, "gw-x")) for _ in range(JOIN_FAILURES + 1)]
        assert [a.status_code for a in answers] == [403] * JOIN_FAILURES + [429]
        assert 1 <= int(answers[-1].headers["retry-after"]) <= 61
        assert "too many failed joins" in answers[-1].json()["detail"]
        # blocked is blocked: the address cannot try a good token either until the window passes
        assert client.post("/api/v1/join", json=join_body(good, "gw-y")).status_code == 429
    # guesses at one token from many addresses: the token's own limit
    remaining, address = JOIN_TOKEN_FAILURES - JOIN_FAILURES, 3
    while remaining > 0:  # each address stays below its own limit
        with trust(registry, f"127.0.0.{address}") as client:
            for _ in range(min(remaining, JOIN_FAILURES - 1)):
                assert client.post("/api/v1/join", json=join_body(wrong, "gw-x")).status_code == 403
                remaining -= 1
        address += 1
    with trust(registry, "127.0.0.9") as client:
        blocked = client.post("/api/v1/join", json=join_body(guessed, "gw-z"))
        assert blocked.status_code == 429 and "retry-after" in blocked.headers, blocked.text
        # the address itself is not blocked: another token joins
        assert client.post("/api/v1/join", json=join_body(good, "gw-z")).status_code == 200
    assert "gw-z" in registry.nodes()
    viewer = registry.cli("token", "create").stdout.strip()
    with trust(registry) as client:
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {viewer}"}).text
    assert 'fieldgate_registry_join_attempts_total{method="token",outcome="throttled"} 3.0' in metrics


def test_a_fleet_joining_at_once_is_not_throttled(registry: Registry) -> None:
    fleet = JOIN_TOKEN_FAILURES + JOIN_FAILURES + 5
    token = registry.token("--max-uses", str(fleet))
    bodies = [join_body(token, f"gw-{n}") for n in range(fleet)]

    async def join_all() -> list[int]:
        async def one(number: int) -> int:
            # most nodes behind one address (a site's NAT), the others from their own
            address = "127.0.0.1" if number % 4 else f"127.0.1.{number}"
            context = ssl.create_default_context(cafile=str(registry.data_dir / "ca.pem"))
            transport = httpx.AsyncHTTPTransport(verify=context, local_address=address)
            async with httpx.AsyncClient(base_url=registry.url, timeout=30, transport=transport) as client:
                return (await client.post("/api/v1/join", json=bodies[number])).status_code

        return list(await asyncio.gather(*(one(n) for n in range(fleet))))

    assert asyncio.run(join_all()) == [200] * fleet
    assert len(registry.nodes()) == fleet
