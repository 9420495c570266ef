"""Tests that the shipped deploy/nginx.conf, run by a real nginx in front of two daphne
processes sharing a real Redis, passes websockets, keeps client addresses apart, keeps
/metrics private, goes around a stopped process, and, with the sticky upstream its
comments describe, keeps a Socket.IO long-polling session on one process.

nginx runs the file itself: only the lines under its "EDIT" comments (ports, certificate,
access log) are replaced, and it is included from an http block like Debian's."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed

from tests.servers import PROJECT_DIR, Server, free_port, prepare_database, server_env, start_daphnes
from tests.socketio_raw import decode_event, event_packet
from tests.wsclient import WsClient

SITE_CONF = PROJECT_DIR / "deploy" / "nginx.conf"
NGINX_ADDRESS = "127.0.0.1"  # nginx listens here, and connects to daphne from here
OFFENDER, BYSTANDER = "127.0.0.2", "127.0.0.3"  # client source addresses, distinct loopback ones
POLLER = "127.0.0.4"  # the long-polling Socket.IO client's address
AUTH_FAILURES_PER_MINUTE = 5
TIMEOUT_SECS = 10.0
POLL_SECS = 0.05

# The http block around a conf.d file, as Debian's /etc/nginx/nginx.conf has it (its
# keepalive_timeout and ssl_protocols included, so that the site's own must not clash
# with them), with every path in the test's directory.
MAIN_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    keepalive_timeout 65;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    access_log {dir}/default.access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/calls.conf;
}}
"""


def render_site(
    upstream_ports: list[int], https_port: int, http_port: int, directory: Path, *, sticky: bool = False
) -> str:
    """deploy/nginx.conf with its EDIT lines set for this test; fails if one is gone.

    ``sticky``: as its comments tell an operator with long-polling Socket.IO clients,
    with the ``calls_sticky`` upstream uncommented and /socket.io/ pointed at it."""
    first, second = upstream_ports
    text = SITE_CONF.read_text()
    if sticky:
        text = enable_sticky_upstream(text)
    replacements = {
        "server 127.0.0.1:8001 ": f"server 127.0.0.1:{first} ",
        "server 127.0.0.1:8002 ": f"server 127.0.0.1:{second} ",
        "listen 443 ssl;": f"listen {NGINX_ADDRESS}:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        "listen 80;": f"listen {NGINX_ADDRESS}:{http_port};",
        "listen [::]:80;": "",
        "/etc/letsencrypt/live/chat.example.com/fullchain.pem": str(directory / "cert.pem"),
        "/etc/letsencrypt/live/chat.example.com/privkey.pem": str(directory / "key.pem"),
        "/var/log/nginx/calls.access.log": str(directory / "access.log"),
    }
    if sticky:
        replacements["server 127.0.0.1:8001;"] = f"server 127.0.0.1:{first};"
        replacements["server 127.0.0.1:8002;"] = f"server 127.0.0.1:{second};"
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


def enable_sticky_upstream(text: str) -> str:
    """``text`` with the commented ``upstream calls_sticky`` block uncommented and the
    /socket.io/ location's proxy_pass pointed at it; fails if either is gone."""
    block = re.compile(r"^#upstream calls_sticky \{\n(?:#.*\n)*?#\}$", re.MULTILINE)
    assert len(block.findall(text)) == 1, "deploy/nginx.conf no longer has one commented upstream calls_sticky"
    text = block.sub(lambda match: re.sub(r"^#", "", match.group(0), flags=re.MULTILINE), text)
    assert "ip_hash;" in text
    location = re.compile(r"(location /socket\.io/ \{[^}]*?proxy_pass http://)calls;")
    assert len(location.findall(text)) == 1, "deploy/nginx.conf's /socket.io/ location no longer proxies to calls"
    return location.sub(r"\1calls_sticky;", text)


def write_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), the client's only CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NGINX_ADDRESS)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(NGINX_ADDRESS))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@dataclass
class Nginx:
    directory: Path
    process: subprocess.Popen
    https_port: int
    http_port: int

    @classmethod
    def start(cls, directory: Path, upstream_ports: list[int], *, sticky: bool = False) -> Nginx:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise RuntimeError("nginx is not installed: run scripts/ensure-nginx (make test does).")
        directory.mkdir()
        write_certificate(directory)
        https_port, http_port = free_port(), free_port()
        site = render_site(upstream_ports, https_port, http_port, directory, sticky=sticky)
        (directory / "calls.conf").write_text(site)
        (directory / "nginx.conf").write_text(MAIN_CONF.format(dir=directory))
        process = subprocess.Popen(
            [binary, "-p", f"{directory}/", "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log"),
             "-g", "daemon off;"],
            stdout=(directory / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that its workers can be killed with it
        )  # fmt: skip
        nginx = cls(directory, process, https_port, http_port)
        try:
            nginx.wait_until_listening()
        except BaseException:
            nginx.stop()
            raise
        return nginx

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection((NGINX_ADDRESS, self.https_port), timeout=1).close()
                return
            except OSError:
                time.sleep(POLL_SECS)
        raise RuntimeError(f"nginx did not listen within {TIMEOUT_SECS:.0f}s:\n{self.error_log()}")

    def error_log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.directory / "error.log", self.directory / "stdout.log")
            if path.exists()
        )

    def access_log(self) -> list[str]:
        return (self.directory / "access.log").read_text().splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # fast shutdown: the master stops its workers
            try:
                self.process.wait(TIMEOUT_SECS)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group of the nginx started here
        except ProcessLookupError:
            pass
        self.process.wait(TIMEOUT_SECS)


@dataclass
class Proxied:
    servers: list[Server]
    nginx: Nginx
    tls: ssl.SSLContext

    def request(
        self,
        method: str,
        path: str,
        *,
        source: str = NGINX_ADDRESS,
        body: dict | None = None,
        port: int | None = None,
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        """One request to nginx from ``source``: HTTPS, or plain HTTP when ``port`` is given."""
        if port is None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                NGINX_ADDRESS, self.nginx.https_port, timeout=TIMEOUT_SECS, source_address=(source, 0), context=self.tls
            )
        else:
            connection = http.client.HTTPConnection(
                NGINX_ADDRESS, port, timeout=TIMEOUT_SECS, source_address=(source, 0)
            )
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = connection.getresponse()
            return response.status, response, response.read()
        finally:
            connection.close()

    def token(self, username: str = "alice", source: str = NGINX_ADDRESS) -> str:
        status, _, body = self.request(
            "POST", "/api/auth/token/", source=source, body={"username": username, "password": "demo-pass-123"}
        )
        assert status == 200, body
        return json.loads(body)["access"]

    async def websocket(
        self, token: str, *, source: str = NGINX_ADDRESS, headers: dict[str, str] | None = None
    ) -> websockets.ClientConnection:
        return await websockets.connect(
            f"wss://{NGINX_ADDRESS}:{self.nginx.https_port}/ws/calls/?token={token}",
            ssl=self.tls,
            local_addr=(source, 0),
            additional_headers=headers,
            proxy=None,  # straight to nginx, whatever proxy the environment names
            open_timeout=TIMEOUT_SECS,
            close_timeout=TIMEOUT_SECS,
        )

    async def client(self, token: str, *, source: str = NGINX_ADDRESS) -> WsClient:
        """A websocket through nginx that got ``webrtc:connected``."""
        client = WsClient(await self.websocket(token, source=source))
        connected = await client.expect("webrtc:connected")
        client.socket_id = connected["data"]["socketId"]
        client.user_id = connected["data"]["userId"]
        return client

    async def close_code(self, token: str, *, source: str, headers: dict[str, str] | None = None) -> int | None:
        """The code the server closes a fresh websocket with, before any frame."""
        async with await self.websocket(token, source=source, headers=headers) as connection:
            try:
                frame = await asyncio.wait_for(connection.recv(), TIMEOUT_SECS)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None
        raise AssertionError(f"the socket stayed open and received {frame}")


@pytest.fixture(scope="module")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the demo users, copied for each test (migrating takes seconds)."""
    database = tmp_path_factory.mktemp("nginx-database") / "db.sqlite3"
    prepare_database(server_env(database))
    return database


@pytest.fixture
def proxied(tmp_path: Path, redis_url: str, database_template: Path) -> Iterator[Proxied]:
    """nginx with deploy/nginx.conf in front of two daphne processes on one Redis, with
    nginx's address in CALLS_TRUSTED_PROXIES; all stopped after, whatever happened."""
    yield from run_proxied(tmp_path, redis_url, database_template, sticky=False)


@pytest.fixture
def proxied_sticky(tmp_path: Path, redis_url: str, database_template: Path) -> Iterator[Proxied]:
    """``proxied``, with /socket.io/ going to the sticky (ip_hash) upstream."""
    yield from run_proxied(tmp_path, redis_url, database_template, sticky=True)


def run_proxied(tmp_path: Path, redis_url: str, database_template: Path, *, sticky: bool) -> Iterator[Proxied]:
    for path in database_template.parent.glob("db.sqlite3*"):
        shutil.copyfile(path, tmp_path / path.name)
    env = server_env(
        tmp_path / "db.sqlite3",
        REDIS_URL=redis_url,
        CALLS_TRUSTED_PROXIES=NGINX_ADDRESS,
        CALLS_AUTH_FAILURES_PER_MINUTE=str(AUTH_FAILURES_PER_MINUTE),
    )
    servers: list[Server] = []
    nginx: Nginx | None = None
    try:
        servers = start_daphnes(env, [tmp_path / f"daphne{i}.log" for i in range(2)])
        nginx = Nginx.start(tmp_path / "nginx", [server.port for server in servers], sticky=sticky)
        tls = ssl.create_default_context(cafile=nginx.directory / "cert.pem")
        yield Proxied(servers, nginx, tls)
    finally:
        if nginx is not None:
            nginx.stop()
        for server in servers:
            server.stop(signal.SIGKILL)


async def test_websockets_are_upgraded_and_relay_through_the_proxy(proxied: Proxied) -> None:
    """Tests that websockets opened through nginx, with a token got through it, are
    connected and signal each other."""
    tokens = [proxied.token("alice"), proxied.token("bob")]
    alice = await proxied.client(tokens[0])
    bob = await proxied.client(tokens[1])
    try:
        await alice.join("proxied")
        joined = await bob.join("proxied")
        assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id]
        assert (await alice.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == bob.socket_id

        offer = {"type": "offer", "sdp": "v=0 through nginx"}
        await bob.send("webrtc:offer", {"callRoomId": "proxied", "targetSocketId": alice.socket_id, "offer": offer})
        relayed = (await alice.expect("webrtc:offer"))["data"]
        assert (relayed["fromSocketId"], relayed["offer"]) == (bob.socket_id, offer)
    finally:
        await alice.close()
        await bob.close()


async def test_failed_logins_lock_out_their_own_client_address_only(proxied: Proxied) -> None:
    """Tests that behind nginx failed logins count per client address: the offender is
    closed with 4429 even with a valid token and a forged X-Forwarded-For, another
    address still connects."""
    token = proxied.token("alice", source=BYSTANDER)
    for _ in range(AUTH_FAILURES_PER_MINUTE):
        assert await proxied.close_code("not-a-token", source=OFFENDER) == 4401
    # nginx spread them over both processes: what closes the offender is the count in Redis.
    refused = [server.metric('calls_auth_refused_total{code="4401"}') for server in proxied.servers]
    assert sum(refused) == AUTH_FAILURES_PER_MINUTE and min(refused) > 0, refused

    assert await proxied.close_code(token, source=OFFENDER) == 4429
    for forged in (BYSTANDER, "203.0.113.7", f"{BYSTANDER}, 203.0.113.7"):
        assert await proxied.close_code(token, source=OFFENDER, headers={"X-Forwarded-For": forged}) == 4429

    bystander = await proxied.client(token, source=BYSTANDER)
    await bystander.close()
    assert await proxied.close_code("not-a-token", source=BYSTANDER) == 4401  # its own count: 1 of 5


def test_metrics_are_not_served_through_the_proxy_and_http_is_redirected(proxied: Proxied) -> None:
    """Tests that nginx answers /metrics (in any spelling) with 404 while each daphne
    serves it on its own port, and redirects plain HTTP to HTTPS."""
    # From nginx's own address: the application would let such a client read /metrics.
    for path in ("/metrics", "/metrics/", "/metrics?name[]=calls_rooms", "//metrics", "/%6Detrics"):
        status, _, _ = proxied.request("GET", path)
        assert status == 404, path
    for server in proxied.servers:
        with urllib.request.urlopen(f"{server.http}/metrics", timeout=TIMEOUT_SECS) as response:
            assert response.status == 200
            assert b"calls_connections" in response.read()

    status, response, _ = proxied.request("GET", "/healthz", port=proxied.nginx.http_port)
    assert (status, response.getheader("Location")) == (301, f"https://{NGINX_ADDRESS}/healthz")


async def test_a_stopped_process_is_skipped(proxied: Proxied) -> None:
    """Tests that once one daphne has stopped, HTTP requests and new websockets through
    nginx still succeed, all served by the other."""
    stopped, survivor = proxied.servers
    stopped.stop()  # SIGTERM; returns once it has exited
    assert stopped.process.returncode is not None

    token = proxied.token("alice")
    for _ in range(3):
        status, _, body = proxied.request("GET", "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        client = await proxied.client(token)
        await client.close()

    # Seven requests in the access log, each answered by the survivor; the one nginx
    # first sent to the stopped process was passed on to it.
    lines = wait_for(proxied.nginx.access_log, lambda lines: len(lines) >= 7)
    tries = [upstream_tries(line) for line in lines]
    assert all(tried[-1] in ((survivor.port, "200"), (survivor.port, "101")) for tried in tries), lines
    assert [(stopped.port, "502"), (survivor.port, "200")] in tries, lines


def upstream_tries(line: str) -> list[tuple[int, str]]:
    """The (port, status) of every process nginx tried for one access log line."""
    match = re.search(r"upstream=(.+) upstream_status=(.+)$", line)
    assert match is not None, line
    addresses, statuses = (part.split(", ") for part in match.groups())
    return [(int(address.rpartition(":")[2]), status) for address, status in zip(addresses, statuses, strict=True)]


def test_the_process_files_agree_with_the_nginx_upstream() -> None:
    """Tests that the Procfile and the systemd unit run daphne on the upstream's ports as
    nginx.conf expects, and that the example environment is valid and trusts nginx."""
    deploy = PROJECT_DIR / "deploy"
    ports = re.findall(r"^\s*server 127\.0\.0\.1:(\d+) ", (deploy / "nginx.conf").read_text(), re.MULTILINE)
    assert len(ports) >= 2
    procfile = re.findall(r"^\w+: (.+)$", (deploy / "Procfile").read_text(), re.MULTILINE)
    assert procfile == [f".venv/bin/daphne -b 127.0.0.1 -p {port} config.asgi:application" for port in ports]
    unit = (deploy / "calls@.service").read_text()
    assert re.search(r"^ExecStart=\S+/daphne -b 127\.0\.0\.1 -p %i config\.asgi:application$", unit, re.MULTILINE)
    assert re.search(r"^EnvironmentFile=/etc/calls/calls\.env$", unit, re.MULTILINE)
    assert re.search(r"^WantedBy=calls\.target$", unit, re.MULTILINE)

    # The example environment, read as systemd's EnvironmentFile reads it, must pass the
    # settings' checks and trust the address nginx connects from.
    lines = (deploy / "calls.env.example").read_text().splitlines()
    example = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    env = {"PATH": os.environ["PATH"], **example, "DJANGO_SETTINGS_MODULE": "config.settings"}
    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.CALLS_TRUSTED_PROXIES))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert NGINX_ADDRESS in json.loads(done.stdout)


def wait_for(read: Callable[[], list[str]], done: Callable[[list[str]], bool]) -> list[str]:
    """``read()`` once ``done`` holds for it (nginx logs a request just after answering it)."""
    deadline = time.monotonic() + TIMEOUT_SECS
    while not done(lines := read()):
        assert time.monotonic() < deadline, "\n".join(lines)
        time.sleep(POLL_SECS)
    return lines


class SessionUnknown(Exception):
    """A polling request was answered 400 "Session ID unknown": it reached a process
    that does not hold the session."""


class ProxiedPolling:
    """An Engine.IO long-polling session through nginx from ``source``: one HTTPS
    connection per request, one request at a time (so no GET waits while a POST is
    sent); pings, none of which come within a test, are answered."""

    def __init__(self, proxied: Proxied, source: str) -> None:
        self.proxied = proxied
        self.source = source
        self.sid = ""
        self.requests = 0
        self.received: list[str] = []

    def request(self, method: str, body: str | None = None) -> bytes:
        """The body of a 200 answer; raises SessionUnknown for an unknown sid."""
        query = "EIO=4&transport=polling" + (f"&sid={self.sid}" if self.sid else "")
        connection = http.client.HTTPSConnection(
            NGINX_ADDRESS,
            self.proxied.nginx.https_port,
            timeout=TIMEOUT_SECS,  # a GET with nothing to receive would wait for the 25 s ping
            source_address=(self.source, 0),
            context=self.proxied.tls,
        )
        try:
            headers = {"Content-Type": "text/plain;charset=UTF-8"} if body is not None else {}
            connection.request(method, f"/socket.io/?{query}", body=body, headers=headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
        finally:
            connection.close()
        self.requests += 1
        if (status, answer) == (400, b'{"code":1,"message":"Session ID unknown"}'):
            raise SessionUnknown(f"{method} #{self.requests}")
        assert status == 200, (method, self.requests, status, answer)
        return answer

    def open(self) -> None:
        answer = self.request("GET")
        assert answer.startswith(b"0"), answer
        self.sid = json.loads(answer[1:])["sid"]

    def post(self, *packets: str) -> None:
        assert self.request("POST", "\x1e".join(packets)) == b"ok"

    def receive(self) -> str:
        """The next packet other than a ping or a noop, polling for it as needed."""
        while not self.received:
            for packet in self.request("GET").decode().split("\x1e"):
                if packet == "2":
                    self.post("3")
                elif packet != "6":
                    self.received.append(packet)
        return self.received.pop(0)

    def event(self, expected: str) -> dict:
        event, data = decode_event(self.receive())
        assert event == expected, (event, data)
        return data


def socketio_call(session: ProxiedPolling, token: str, room: str) -> None:
    """A Socket.IO client's session over long-polling: open, connect, join ``room``,
    leave it and join it again, then close; at least 10 requests."""
    session.open()
    session.post("40" + json.dumps({"token": token}))
    reply = session.receive()
    assert reply.startswith('40{"sid"'), reply
    socket_id = json.loads(reply[2:])["sid"]
    assert session.event("webrtc:connected")["socketId"] == socket_id
    for _ in range(2):
        session.post(event_packet("webrtc:join-room", {"callRoomId": room}))
        joined = session.event("webrtc:room-joined")
        assert (joined["callRoomId"], joined["participantCount"]) == (room, 1), joined
        assert joined["participant"]["socketId"] == socket_id
        session.post(event_packet("webrtc:leave-room", {"callRoomId": room}))
        assert session.event("webrtc:room-left") == {"callRoomId": room}
    session.post("1")  # Engine.IO close


def socketio_tries(proxied: Proxied, requests: int) -> list[list[tuple[int, str]]]:
    """(port, status) tried for every /socket.io/ request, once ``requests`` are logged."""
    lines = wait_for(
        proxied.nginx.access_log, lambda lines: sum("/socket.io/ HTTP" in line for line in lines) >= requests
    )
    return [upstream_tries(line) for line in lines if "/socket.io/ HTTP" in line]


def test_a_long_polling_session_stays_on_one_process_with_the_sticky_upstream(proxied_sticky: Proxied) -> None:
    """Tests that with the calls_sticky (ip_hash) upstream that the file's comments tell
    how to enable for /socket.io/, every request of a long-polling Socket.IO session from
    one address reaches the one daphne (of two) that holds it, and the session works."""
    session = ProxiedPolling(proxied_sticky, POLLER)
    socketio_call(session, proxied_sticky.token("alice", source=POLLER), "sticky")
    assert session.requests >= 10, session.requests

    tries = socketio_tries(proxied_sticky, session.requests)
    assert len(tries) == session.requests
    ports = {server.port for server in proxied_sticky.servers}
    assert all(len(tried) == 1 and tried[0][0] in ports and tried[0][1] == "200" for tried in tries), tries
    assert len({tried[0][0] for tried in tries}) == 1, tries


def test_without_sticky_routing_a_long_polling_session_is_lost(proxied: Proxied) -> None:
    """Tests that with the shipped least_conn upstream for /socket.io/, the same session
    breaks: nginx sends one of its requests to the other daphne, which answers 400
    "Session ID unknown" (so stickiness is what keeps the session above working)."""
    session = ProxiedPolling(proxied, POLLER)
    with pytest.raises(SessionUnknown):
        socketio_call(session, proxied.token("alice", source=POLLER), "sticky")

    tries = socketio_tries(proxied, session.requests)
    assert len(tries) == session.requests and all(len(tried) == 1 for tried in tries), tries
    (home, _), (elsewhere, status) = tries[0][0], tries[-1][0]
    assert (status, elsewhere != home) == ("400", True), tries
    assert all(tried[0] == (home, "200") for tried in tries[:-1]), tries
