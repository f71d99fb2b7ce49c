"""The Mailman 3 backend from an MX host to a Mailman on another host: REST over HTTPS,
the certificate verified (against a CA this test makes with openssl), the password
from a file.

A TLS proxy in front of the real Mailman 3's REST port stands in for the web server a
site puts there.  Through a real Postfix and daemon: a member's post is accepted, a
nonmember's refused; a certificate the CA did not sign, or one for another name, is a
backend error (451), never an unverified request that would hand the REST password
to whoever answers.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import infra
import pytest
from lgdaemon import ListgateDaemon

from listgate.backends.mailman3 import Mailman3Backend
from listgate.model import BackendError

LIST = "tls@lists.test"
MEMBER = "member@pass.test"
DNS = {"txt": {"pass.test": "v=spf1 ip4:127.0.0.0/8 -all"}}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    """``name``-ca.pem/-ca.key: a self-signed CA."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", "-days", "2",
            "-subj", f"/CN=listgate test CA {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)


def make_cert(d: Path, ca: str, name: str, san: str) -> None:
    """``name``.pem/.key signed by CA ``ca``, for the subjectAltName ``san``."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-ca.pem", "-CAkey",
            f"{ca}-ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=d)


class TlsProxy:
    """HTTPS on 127.0.0.1:<free port> in front of a plain HTTP ``target``."""

    def __init__(self, target: tuple[str, int], cert: Path, key: Path) -> None:
        self.target = target
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused our certificate
            client.close()
            return
        up = socket.create_connection(self.target, timeout=10)
        try:  # one thread per connection: an SSL socket is not shared between threads
            while True:
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 30)[0]
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (up if s is tls else tls).sendall(data)
        except OSError:
            return
        finally:
            up.close()
            tls.close()

    def close(self) -> None:
        self.srv.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "site")
    make_ca(d, "rogue")
    make_cert(d, "site", "rest", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "site", "elsewhere", "DNS:mm3.elsewhere.test")
    make_cert(d, "rogue", "forged", "IP:127.0.0.1,DNS:localhost")
    return d


@pytest.fixture(scope="module")
def rest(mailman3):
    """Mailman's REST target (host, port) and its base path, with the test list."""
    mailman3.create_list(LIST, default_nonmember_action="reject")
    mailman3.subscribe(LIST, MEMBER)
    return (mailman3.host, mailman3.rest_port)


def proxy_url(proxy: TlsProxy) -> str:
    return f"https://127.0.0.1:{proxy.port}/3.1"


def test_member_accepted_nonmember_refused_over_verified_https(
        mailman3, rest, pki, tmp_path, dns_factory, postfix_factory) -> None:
    proxy = TlsProxy(rest, pki / "rest.pem", pki / "rest.key")
    secret = tmp_path / "rest-password"
    secret.write_text(mailman3.admin_pass + "\n")
    os.chmod(secret, 0o640)
    d = ListgateDaemon(nameservers=dns_factory(**DNS).nameservers, config=(
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        "[lists]\nbackend = mailman3\n"
        f"[mailman3]\nurl = {proxy_url(proxy)}\nuser = {mailman3.admin_user}\n"
        f"password_file = {secret}\nca_file = {pki / 'site-ca.pem'}\n"))
    try:
        d.start()
        mx = postfix_factory(milter=d.postfix_milter)
        for sender, expected in ((MEMBER, 250), ("stranger@pass.test", 550)):
            msg = infra.make_message(from_=sender, to=LIST, subject="over https")
            r = infra.smtp_transaction("127.0.0.1", mx.port, helo="mail.pass.test",
                                       mail_from=sender, rcpts=[LIST], message=msg,
                                       source_ip="127.0.0.2")
            assert r.final.code == expected, (sender, r.steps(), d.log_text())
        assert "backend error" not in d.log_text()
    finally:
        d.close()
        proxy.close()


@pytest.mark.parametrize(("cert", "why"), [
    ("forged", "unable to get local issuer certificate"),  # another CA's certificate
    ("elsewhere", "IP address mismatch"),  # our CA's, for another name
])
def test_a_certificate_that_does_not_verify_is_a_backend_error(
        mailman3, rest, pki, cert, why) -> None:
    proxy = TlsProxy(rest, pki / f"{cert}.pem", pki / f"{cert}.key")
    try:
        b = Mailman3Backend(proxy_url(proxy), mailman3.admin_user,
                            mailman3.admin_pass, timeout=5, ca_file=str(pki / "site-ca.pem"))
        with pytest.raises(BackendError, match="certificate verify failed") as e:
            b.find_list(LIST)
        assert str(e.value).startswith(f"mailman3 {proxy_url(proxy)}/")
        assert f"/lists: TLS: certificate verify failed: {why}" in str(e.value)
        b.close()
    finally:
        proxy.close()


def test_without_ca_file_the_system_cas_decide(mailman3, rest, pki) -> None:
    """Our own CA is not one of the system's: without ca_file the request is refused."""
    proxy = TlsProxy(rest, pki / "rest.pem", pki / "rest.key")
    try:
        b = Mailman3Backend(proxy_url(proxy), mailman3.admin_user, mailman3.admin_pass,
                            timeout=5)
        with pytest.raises(BackendError, match="certificate verify failed"):
            b.find_list(LIST)
        b = Mailman3Backend(proxy_url(proxy), mailman3.admin_user, mailman3.admin_pass,
                            timeout=5, ca_file=str(pki / "site-ca.pem"))
        assert b.find_list(LIST) == LIST
        b.close()
    finally:
        proxy.close()
