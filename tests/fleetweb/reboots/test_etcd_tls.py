"""etcd over TLS (issue 4 §3): a throw-away CA, a server certificate for 127.0.0.1 and a client
certificate, and a real etcd started with ``--client-cert-auth`` on ``https://127.0.0.1:<port>``.

* the agent's client (``agent.etcd.make_client`` with CA + client cert/key) runs Locksmith on it;
* without the CA, with a wrong CA or without a client certificate, nothing is written and the
  error is a LockError ``etcd_unavailable`` whose cause is the TLS handshake;
* the server (ETCD_ENDPOINTS/ETCD_CA_FILE/ETCD_CERT_FILE/ETCD_KEY_FILE) reads the semaphore over
  TLS for the locks API, and a group's policy carries the CA PEM, never the server's key.

scripts/services.start_etcd has no TLS flags, so etcd is started here (free loopback ports, its
own data dir under the test's tmp dir) and stopped by PID.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.etcd import make_client
from agent.locksmith import ETCD_UNAVAILABLE, LockError, Locksmith, group_key

ETCD_BIN = "/usr/bin/etcd"



# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: str                 # the CA that signed etcd's and the client's certificates
    cert: str               # client certificate (CN fleetweb) and key
    key: str
    wrong_ca: str           # a CA that signed nothing here
    server_cert: str
    server_key: str

    def text(self, name: str) -> str:
        return Path(getattr(self, name)).read_text()


def _make_pki(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject, issuer, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def make_ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(name(cn), name(cn), key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(ca_key, ca_cert, cn, usages, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(name(cn), ca_cert.subject, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    def write(stem, key, cert):
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return str(cert_path), str(key_path)

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca("fleetweb test CA")
    ca, _ = write("ca", ca_key, ca_cert)
    server_cert, server_key = write("server", *make_leaf(
        ca_key, ca_cert, "etcd", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]))
    cert, key = write("client", *make_leaf(ca_key, ca_cert, "fleetweb", [ExtendedKeyUsageOID.CLIENT_AUTH]))
    wrong_ca, _ = write("wrong-ca", *make_ca("some other CA"))
    return Pki(ca=ca, cert=cert, key=key, wrong_ca=wrong_ca, server_cert=server_cert, server_key=server_key)


# ---------------------------------------------------------------------------------------------
# A TLS etcd with client-certificate auth
# ---------------------------------------------------------------------------------------------

@dataclass
class TlsEtcd:
    url: str
    pki: Pki
    pid: int

    def client(self, **overrides):
        """A client with the right CA and client certificate unless OVERRIDES says otherwise."""
        kwargs = {"ca": self.pki.ca, "cert": self.pki.cert, "key": self.pki.key, "timeout": 10.0, **overrides}
        return make_client([self.url], **kwargs)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    from scripts.services import free_port, stop_pid

    base = tmp_path_factory.mktemp("etcd-tls")
    pki = _make_pki(base / "pki")
    client_port = free_port()
    peer_port = free_port()
    while peer_port == client_port:
        peer_port = free_port()
    url, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    cmd = [ETCD_BIN, "--name", "tls", "--data-dir", str(base / "data"),
           "--listen-client-urls", url, "--advertise-client-urls", url,
           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
           "--initial-cluster", f"tls={peer}", "--initial-cluster-state", "new",
           "--cert-file", pki.server_cert, "--key-file", pki.server_key,
           "--trusted-ca-file", pki.ca, "--client-cert-auth",
           "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
    log_path = base / "etcd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = TlsEtcd(url=url, pki=pki, pid=proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = server.client(timeout=5.0)
            try:
                probe.status()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"TLS etcd did not come up on {url}:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.1)
            finally:
                probe.close()
        yield server
    finally:
        stop_pid(proc.pid, timeout=5, expect=ETCD_BIN)
        proc.poll()


def _cause_text(exc: BaseException) -> str:
    """The messages and gRPC details along EXC's cause/context chain."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        details = getattr(exc, "details", None)
        if callable(details):
            try:
                parts.append(details() or "")
            except Exception:
                pass
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# (1) the agent's client over TLS
# ---------------------------------------------------------------------------------------------

def test_agent_client_with_ca_and_client_cert_locks_and_unlocks(tls_etcd):
    client = tls_etcd.client()
    try:
        smith = Locksmith(client, group="web", prefix="fleet/tls-agent/", default_max=1)
        locked = smith.lock("host-a")
        assert locked.holders == ["host-a"] and locked.semaphore == 0
        with pytest.raises(LockError) as err:
            smith.lock("host-b")
        assert err.value.code == "no_slots"
        assert smith.unlock("host-a").holders == []
        value, _ = client.get(smith.key)
        assert json.loads(value) == {"semaphore": 1, "max": 1, "holders": []}
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# (2) a client that cannot verify etcd (or that etcd cannot verify) fails and writes nothing
# ---------------------------------------------------------------------------------------------

BAD_CLIENTS = {
    # no CA: gRPC falls back to the system roots, which do not know our CA
    "no CA": lambda pki: {"ca": None},
    "wrong CA": lambda pki: {"ca": pki.wrong_ca},
    # etcd runs with --client-cert-auth: a client that verifies etcd but shows no certificate
    "no client certificate": lambda pki: {"cert": None, "key": None},
}


@pytest.mark.parametrize("case", list(BAD_CLIENTS))
def test_a_client_that_fails_tls_gets_etcd_unavailable_and_writes_nothing(tls_etcd, case):
    prefix = f"fleet/tls-{case.replace(' ', '-').lower()}/"
    bad = tls_etcd.client(**BAD_CLIENTS[case](tls_etcd.pki))
    good = tls_etcd.client()
    try:
        with pytest.raises(LockError) as err:
            Locksmith(bad, group="web", prefix=prefix).lock("host-a")
        assert err.value.code == ETCD_UNAVAILABLE
        assert "etcd did not answer" in str(err.value)
        cause = _cause_text(err.value)
        if case == "no client certificate":
            assert "TSI_" in cause or "handshake" in cause.lower() or "certificate" in cause.lower(), cause
        else:
            assert "CERTIFICATE_VERIFY_FAILED" in cause and "Tls handshake failed" in cause, cause
        # Nothing reached etcd: not the semaphore (not even its creation), nothing under the prefix.
        assert good.get(group_key("web", prefix)) == (None, None)
        assert list(good.get_prefix(prefix)) == []
    finally:
        bad.close()
        good.close()


@pytest.mark.parametrize("case", ["no CA", "wrong CA"])
def test_the_lock_error_message_itself_names_the_certificate_problem(tls_etcd, case):
    bad = tls_etcd.client(**BAD_CLIENTS[case](tls_etcd.pki))
    try:
        with pytest.raises(LockError) as err:
            Locksmith(bad, group="web", prefix="fleet/msg/").lock("host-a")
        assert err.value.code == ETCD_UNAVAILABLE
        detail = str(err.value).split(": ", 1)[1].lower()          # after "etcd did not answer for KEY: "
        assert "certificate" in detail or "tls" in detail, str(err.value)
    finally:
        bad.close()


# ---------------------------------------------------------------------------------------------
# (3) the server over TLS: settings, the locks API, the policy
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tls_settings(settings, tls_etcd):
    from fleetweb.reboots import etcd

    settings.ETCD_ENDPOINTS = [tls_etcd.url]
    settings.ETCD_USERNAME = settings.ETCD_PASSWORD = None
    settings.ETCD_CA_FILE = tls_etcd.pki.ca
    settings.ETCD_CERT_FILE = tls_etcd.pki.cert
    settings.ETCD_KEY_FILE = tls_etcd.pki.key
    etcd.reset_client()
    yield settings
    etcd.reset_client()


@pytest.mark.django_db
def test_the_locks_api_reads_the_semaphore_over_tls(tls_settings, tls_etcd, alice, acme, web_group):
    from fleetweb.reboots import etcd

    web_group.max_concurrent_reboots = 2
    web_group.save()
    # An agent (its own TLS client) takes a slot; the server must see it through its TLS client.
    agent = tls_etcd.client()
    try:
        Locksmith(agent, group=web_group.slug, prefix=etcd.org_prefix(acme), default_max=2).lock("machine-1")
    finally:
        agent.close()

    r = alice.get("/api/v1/locks/")
    assert r.status_code == 200, r.content
    [item] = r.json()["results"]
    assert item["group"] == web_group.pk and item["error"] is None
    assert item["max"] == 2 and item["free"] == 1
    assert [h["id"] for h in item["holders"]] == ["machine-1"]
    # The server's client really is the TLS one built from the settings.
    client = etcd.server_client()
    assert (client.ca, client.cert, client.key) == (tls_etcd.pki.ca, tls_etcd.pki.cert, tls_etcd.pki.key)
    assert client.endpoints == [("https", "127.0.0.1", int(tls_etcd.url.rsplit(":", 1)[1]))]


@pytest.mark.django_db
def test_the_locks_api_reports_an_error_when_the_ca_is_wrong(tls_settings, tls_etcd, alice, web_group):
    tls_settings.ETCD_CA_FILE = tls_etcd.pki.wrong_ca      # server_client() rebuilds on a settings change
    r = alice.get("/api/v1/locks/")
    assert r.status_code == 200, r.content
    [item] = r.json()["results"]
    assert item["group"] == web_group.pk and item["error"], item
    assert item["holders"] == []


@pytest.mark.django_db
def test_policy_carries_the_ca_pem_and_never_the_servers_client_key(tls_settings, tls_etcd, acme, web_group):
    policy = web_group.policy()
    assert policy["etcd_endpoints"] == [tls_etcd.url]
    assert policy["etcd_ca"] == tls_etcd.pki.text("ca")
    assert policy["etcd_prefix"] == f"fleet/{acme.slug}/"
    assert "etcd_cert" not in policy and "etcd_key" not in policy
    # No auth configured: no user/password is handed out.
    assert "etcd_username" not in policy and "etcd_password" not in policy
    # Neither the key nor the server's client certificate appears anywhere in the frame.
    frame = json.dumps(policy)
    key_body = "".join(tls_etcd.pki.text("key").strip().splitlines()[1:-1])
    cert_body = "".join(tls_etcd.pki.text("cert").strip().splitlines()[1:-1])
    assert "PRIVATE KEY" not in frame
    assert key_body[:40] not in frame.replace("\\n", "") and cert_body[:40] not in frame.replace("\\n", "")


@pytest.mark.django_db
def test_an_agent_configured_from_the_policy_verifies_etcd_with_the_ca(tls_settings, tls_etcd, acme, web_group,
                                                                       tmp_path):
    """The agent writes the policy's CA to etcd-ca.pem and trusts etcd with it.  The policy carries no
    client certificate, so against an etcd with --client-cert-auth the host needs one of its own
    (provisioned out of band); with it, the policy's settings lock and unlock."""
    from agent.config import load_etcd_settings, store_etcd_policy

    kept = store_etcd_policy(tmp_path / "state", web_group.policy())
    assert "etcd_ca" not in kept
    conf = load_etcd_settings(tmp_path / "state")
    assert conf.endpoints == [tls_etcd.url] and Path(conf.ca).read_text() == tls_etcd.pki.text("ca")
    assert conf.cert is None and conf.key is None

    alone = conf.client(timeout=10.0)
    try:
        with pytest.raises(LockError) as err:
            Locksmith(alone, group=conf.group, prefix=conf.prefix, default_max=conf.max).lock("machine-2")
        assert err.value.code == ETCD_UNAVAILABLE     # etcd demands a client certificate
    finally:
        alone.close()

    conf.cert, conf.key = tls_etcd.pki.cert, tls_etcd.pki.key
    client = conf.client(timeout=10.0)
    try:
        smith = Locksmith(client, group=conf.group, prefix=conf.prefix, default_max=conf.max)
        assert smith.lock("machine-2").holders == ["machine-2"]
        assert smith.unlock("machine-2").holders == []
    finally:
        client.close()
