"""Domain rules with the official Python SDK: `network={"allow_out": ["*.allowed.test"],
"deny_out": [ALL_TRAFFIC]}` lets a sandbox reach those names over HTTP (port 80, by `Host`) and
HTTPS (port 443, by the TLS server name), and nothing else.

"The internet" is ours: a network namespace behind a veth pair with two private addresses in
10.203.52.0/29, each serving HTTP on port 80 and HTTPS on port 443 with a page naming the
address it was reached on, and a name server of the test's own on the host's loopback
(`cove serve --egress-resolver`) that knows the test's names. Inside the sandbox, `/etc/hosts`
says the opposite of that name server, as an attacker with root inside would: the proxy must
go where the name really is, never where the sandbox says. Traffic goes only to addresses on
this machine.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from e2b import Sandbox
from e2b.sandbox.network import ALL_TRAFFIC

from conftest import HostNetwork, NameServer, logs_say, point_sdks_at, running_cove_server, wait_until

pytestmark = pytest.mark.cove_server

N = 52
NET = f"10.203.{N}.0/29"
HOST_SIDE, ALLOWED, DENIED = f"10.203.{N}.1", f"10.203.{N}.2", f"10.203.{N}.3"
# Outside every range the server opens: refused by the server's own rules.
PRIVATE = "10.1.2.3"
NAMES = {
    "www.allowed.test": ALLOWED,
    "denied.test": DENIED,
    # A name in the allowed zone whose answer points inside the host's network, as a DNS
    # rebinding attack would.
    "rebind.allowed.test": PRIVATE,
}

SERVER = """
import http.server, socketserver, ssl, sys
addr, port, cert = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/secret":
            body = str(self.headers.get_all("X-Secret")).encode()
        else:
            body = f"reached {addr} for {self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = socketserver.ThreadingTCPServer((addr, port), Page)
if port == 443:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert + ".crt", cert + ".key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def test_hosts():
    """The two test hosts and the name server (its address, and the file of the CA that
    signed the hosts' certificate), removed by name at the end (also when a test fails)."""
    work = tempfile.TemporaryDirectory(prefix="cove-compat-domains-")
    names = NameServer(NAMES)
    network = None
    try:
        # A CA of the test's own signs the test hosts' certificate; the server trusts it
        # (`--egress-ca-file`) as it trusts the host's for real destinations.
        ca, cert = Path(work.name) / "ca", Path(work.name) / "server"
        for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=Cove test CA", "-keyout", f"{ca}.key", "-out", f"{ca}.crt"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=www.allowed.test",
             "-addext", "subjectAltName=DNS:www.allowed.test,DNS:denied.test",
             "-keyout", f"{cert}.key", "-out", f"{cert}.csr"],
            ["x509", "-req", "-in", f"{cert}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-copy_extensions", "copyall",
             "-out", f"{cert}.crt"],
        ):
            subprocess.run(["openssl", *argv], check=True, capture_output=True)
        network = HostNetwork("dom", f"{HOST_SIDE}/29", [f"{ALLOWED}/29", f"{DENIED}/29"])
        for addr in (ALLOWED, DENIED):
            for port in (80, 443):
                network.spawn([sys.executable, "-c", SERVER, addr, str(port), str(cert)])
        for addr in (ALLOWED, DENIED):
            wait_until(lambda: host_answers(addr), f"the test host to answer on {addr}", 20)
        yield SimpleNamespace(address=names.address, ca_file=f"{ca}.crt")
    finally:
        if network is not None:
            network.close()
        names.stop()
        work.cleanup()


def host_answers(addr: str) -> bool:
    """This process (on the host, unfiltered) is answered on both ports."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
    )
    try:
        for scheme in ("http", "https"):
            with opener.open(f"{scheme}://{addr}/", timeout=2) as answer:
                if not answer.read().decode().startswith(f"reached {addr}"):
                    return False
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def domain_server(test_hosts):
    with tempfile.TemporaryDirectory(prefix="cove-compat-domain-server-") as work:
        args = [
            "--allow-private-egress", NET,
            "--egress-resolver", test_hosts.address,
            "--egress-ca-file", test_hosts.ca_file,
        ]
        with running_cove_server(
            Path(work) / "state", Path(work) / "server.log", extra_args=args
        ) as server:
            yield server


@pytest.fixture
def sdk_env(domain_server, monkeypatch):
    point_sdks_at(domain_server, monkeypatch)
    yield domain_server
    domain_server.kill_all()


def lying_hosts_file(sandbox: Sandbox) -> None:
    """What root inside makes of the names: each where the other really is."""
    lines = f"{DENIED} www.allowed.test\n{ALLOWED} denied.test\n{ALLOWED} rebind.allowed.test\n"
    sandbox.files.write("/tmp/hosts", lines)
    sandbox.commands.run("cat /tmp/hosts >> /etc/hosts", user="root")


def fetch(sandbox: Sandbox, url: str) -> str:
    """What curl in the sandbox gets: the page, Cove's refusal, or "failed"."""
    cmd = f"curl -sk -m 10 {url} || echo failed"
    return sandbox.commands.run(cmd).stdout.strip()


def test_allowed_names_are_reached_where_they_really_are(sdk_env, test_hosts):
    sandbox = Sandbox.create(
        network={"allow_out": ["*.allowed.test"], "deny_out": [ALL_TRAFFIC]}
    )
    try:
        lying_hosts_file(sandbox)
        # The sandbox connects to DENIED's address; the proxy goes to the name's own.
        reached = f"reached {ALLOWED} for www.allowed.test"
        assert fetch(sandbox, "http://www.allowed.test/") == reached
        assert fetch(sandbox, "https://www.allowed.test/").startswith(f"reached {ALLOWED}")
        # An allowed address's name that no rule allows: refused by deny-all, over HTTP with
        # an answer naming the rule, over HTTPS by closing.
        refused = fetch(sandbox, "http://denied.test/")
        assert refused.startswith("Cove refused denied.test"), refused
        assert "denyOut 0.0.0.0/0" in refused, refused
        assert fetch(sandbox, "https://denied.test/") == "failed"
        # Addresses themselves stay refused, on the web ports and elsewhere.
        assert "denyOut 0.0.0.0/0" in fetch(sandbox, f"http://{ALLOWED}/")
        assert fetch(sandbox, f"https://{ALLOWED}/") == "failed"
        assert fetch(sandbox, f"http://www.allowed.test:8080/") == "failed"
        # An allowed name whose answer points inside the host's network (DNS rebinding) is
        # refused by the server's rules, which no allowOut opens.
        rebound = fetch(sandbox, "http://rebind.allowed.test/")
        assert "the server's egress rules" in rebound, rebound
        # TLS whose server name is allowed, sent to a denied host's address by the
        # sandbox's own choice: still goes to the allowed name.
        sni = fetch(sandbox, f"--resolve www.allowed.test:443:{DENIED} https://www.allowed.test/")
        assert sni.startswith(f"reached {ALLOWED}"), sni
        info = sandbox.get_info()
        assert info.network is not None
        assert info.network.get("allow_out") == ["*.allowed.test"], info.network
        wait_until(
            lambda: logs_say(sdk_env, sandbox.sandbox_id, "refused by denyOut 0.0.0.0/0"),
            "the sandbox's log to tell the refusals",
            30,
        )
    finally:
        sandbox.kill()


def test_update_network_adds_and_removes_names_on_a_live_sandbox(sdk_env, test_hosts):
    sandbox = Sandbox.create(network={"deny_out": [ALL_TRAFFIC]})
    try:
        lying_hosts_file(sandbox)
        # Addresses only: the web ports are refused by address before any proxy.
        assert fetch(sandbox, "http://denied.test/") == "failed"
        sandbox.update_network({"allow_out": ["denied.test"], "deny_out": [ALL_TRAFFIC]})
        assert fetch(sandbox, "http://denied.test/") == f"reached {DENIED} for denied.test"
        # A denyOut name refuses even where everything else is open.
        sandbox.update_network({"deny_out": ["*.allowed.test"]})
        refused = fetch(sandbox, "http://www.allowed.test/")
        assert "denyOut *.allowed.test" in refused, refused
        assert fetch(sandbox, "http://denied.test/") == f"reached {DENIED} for denied.test"
        # Omitted fields are cleared: no proxy, the sandbox's own address is used again.
        sandbox.update_network({})
        assert fetch(sandbox, "http://www.allowed.test/") == f"reached {DENIED} for www.allowed.test"
    finally:
        sandbox.kill()


def test_dns_servers_are_opened_beside_domain_rules(sdk_env, test_hosts):
    # E2B's meaning: they only open the firewall (all traffic to them), and only while a
    # domain is among the rules.
    sandbox = Sandbox.create(
        network={
            "allow_out": ["*.allowed.test"],
            "deny_out": [ALL_TRAFFIC],
            "dns_servers": [DENIED],
        }
    )
    try:
        assert fetch(sandbox, f"http://{DENIED}/") == f"reached {DENIED} for {DENIED}"
        assert "denyOut 0.0.0.0/0" in fetch(sandbox, f"http://{ALLOWED}/")
        assert sandbox.get_info().network.get("dns_servers") == [DENIED]
        # Without a domain rule they open nothing.
        sandbox.update_network(
            {"allow_out": [ALLOWED], "deny_out": [ALL_TRAFFIC], "dns_servers": [DENIED]}
        )
        assert fetch(sandbox, f"http://{DENIED}/") == "failed"
        assert fetch(sandbox, f"http://{ALLOWED}/") == f"reached {ALLOWED} for {ALLOWED}"
    finally:
        sandbox.kill()


def test_rules_set_headers_the_sandbox_never_sees(sdk_env, test_hosts):
    secret = "s3cret-from-the-rules"
    sandbox = Sandbox.create(
        network={
            "allow_out": ["*.allowed.test", "denied.test"],
            "deny_out": [ALL_TRAFFIC],
            "rules": {"www.allowed.test": [{"transform": {"headers": {"X-Secret": secret}}}]},
        }
    )
    try:
        lying_hosts_file(sandbox)
        # HTTPS, verified inside against the trust store the server added its egress CA to.
        https = "curl -s -m 10 https://www.allowed.test/secret || echo failed"
        assert sandbox.commands.run(https).stdout == f"['{secret}']"
        # The sandbox's own value is replaced, over HTTP as over HTTPS.
        mine = "-H 'X-Secret: mine' http://www.allowed.test/secret"
        assert fetch(sandbox, mine) == f"['{secret}']"
        # Python's clients find the CA too (SSL_CERT_FILE, REQUESTS_CA_BUNDLE).
        python = (
            "python3 -c \"import urllib.request; "
            "print(urllib.request.urlopen('https://www.allowed.test/secret').read().decode())\""
        )
        assert sandbox.commands.run(python).stdout.strip() == f"['{secret}']"
        # Names without rules are not decrypted: their own certificate, no header.
        assert fetch(sandbox, "https://denied.test/secret") == "None"
        # The secret is nowhere in the sandbox.
        assert secret not in sandbox.commands.run("env; cat /proc/1/environ || true", user="root").stdout
        info = sandbox.get_info().network
        assert info.get("rules", {}).get("www.allowed.test"), info
    finally:
        sandbox.kill()
    bad = {"rules": {"www.allowed.test": [{"transform": {"headers": {"Host": "x"}}}]}}
    with pytest.raises(Exception, match="header `Host` frames the request"):
        Sandbox.create(network=bad)


def test_rules_given_to_a_running_sandbox_apply_to_its_next_requests(sdk_env, test_hosts):
    network = {"allow_out": ["*.allowed.test"], "deny_out": [ALL_TRAFFIC]}
    sandbox = Sandbox.create(network=network)
    try:
        lying_hosts_file(sandbox)
        https = "curl -s -m 10 https://www.allowed.test/secret || echo failed"
        # Without rules the destination's own certificate, which the sandbox does not trust.
        assert sandbox.commands.run(https).stdout.strip() == "failed"
        rules = {"www.allowed.test": [{"transform": {"headers": {"X-Secret": "later"}}}]}
        sandbox.update_network({**network, "rules": rules})
        assert sandbox.commands.run(https).stdout == "['later']"
        # Replaced by the next update: no rules, nothing set (and nothing decrypted).
        sandbox.update_network(network)
        assert fetch(sandbox, "https://www.allowed.test/secret") == "None"
    finally:
        sandbox.kill()
