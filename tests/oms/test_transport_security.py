"""ClickHouse users and TLS (projections/store.py, oms/stack.py): the URL's user and password
reach both the native protocol and the HTTP interface; the stack's reader may only read."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from infra.settings import Settings
from oms.stack import _CLICKHOUSE_CONFIG, READER, WRITER, ClickHouseService
from projections.store import (
    ClickHouseStore,
    Credentials,
    ServerStore,
    StoreMisconfigured,
    connect,
    redacted,
    with_database_url,
)
from tests.tls import make_server_certificate


def test_the_url_s_user_password_and_tls_reach_the_store() -> None:
    store = connect("clickhouse://oms_reader:p%40ss@db.example:9440/oms?secure=1&ca_certs=/ca.pem")
    assert isinstance(store, ServerStore)
    assert store._credentials == Credentials(
        user="oms_reader", password="p@ss", secure=True, ca_certs="/ca.pem"
    )
    assert store._http_port == 8443  # ClickHouse's HTTPS port unless the URL names another
    assert store._client.connection.secure_socket
    assert store._client.connection.ssl_options["ca_certs"] == "/ca.pem"
    headers = store._credentials.http_headers()
    assert headers == {"Authorization": "Basic b21zX3JlYWRlcjpwQHNz"}  # oms_reader:p@ss
    assert store.with_database("other")._credentials == store._credentials
    plain = connect("clickhouse://127.0.0.1:9000/oms")
    assert isinstance(plain, ServerStore)
    assert plain._credentials == Credentials() and plain._credentials.http_headers() == {}


def test_a_password_never_shows_in_a_message() -> None:
    assert redacted("clickhouse://oms:s3cret@h:9000/db?x=1") == "clickhouse://oms:***@h:9000/db?x=1"
    with pytest.raises(StoreMisconfigured) as refused:
        connect("clickhouse://oms:s3cret@h:9000/db?http_port=http")
    assert "s3cret" not in str(refused.value)


def test_chdb_refuses_credentials_it_could_not_check(tmp_path: Path) -> None:
    with pytest.raises(StoreMisconfigured, match="no users"):
        connect(f"chdb://oms_reader:pw@{tmp_path}?database=oms")


def test_the_read_url_defaults_to_the_write_url_then_the_stack_s_reader(tmp_path: Path) -> None:
    assert Settings(
        home=tmp_path, clickhouse_url="clickhouse://h/db"
    ).resolved_clickhouse_read_url == ("clickhouse://h/db")
    explicit = Settings(
        clickhouse_url="clickhouse://h/db", clickhouse_read_url="clickhouse://r@h/db"
    )
    assert explicit.resolved_clickhouse_read_url == "clickhouse://r@h/db"
    (tmp_path / "clickhouse").mkdir()
    (tmp_path / "clickhouse" / "read_url").write_text("clickhouse://oms_reader:x@h/oms")
    assert Settings(home=tmp_path).resolved_clickhouse_read_url == "clickhouse://oms_reader:x@h/oms"


@pytest.fixture
def server(stack_settings: Settings) -> Iterator[tuple[ClickHouseService, str]]:
    """The stack's server, its users made (`up` is idempotent), and a database of this test."""
    service = ClickHouseService(stack_settings)
    if service.binary is None:
        pytest.fail("clickhouse-server is not installed; make test installs it (as root)")
    service.up()
    database = f"oms_test_{uuid.uuid4().hex[:10]}"
    yield service, database
    store = connect(service.url)
    store.execute(f"DROP DATABASE IF EXISTS {database}")
    store.close()


@pytest.mark.integration
def test_the_writer_writes_and_the_reader_only_reads(server: tuple[ClickHouseService, str]) -> None:
    service, database = server
    writer = connect(with_database_url(service.url, database))
    writer.execute(f"CREATE DATABASE {database}")
    writer.execute(f"CREATE TABLE {database}.t (x UInt32) ENGINE = MergeTree ORDER BY x")
    writer.insert("t", ["x"], [(1,)])
    writer.insert_rowbinary("t", ["x"], struct.pack("<I", 2))  # over HTTP, as the writer
    reader = connect(with_database_url(service.read_url, database))
    assert reader.query(f"SELECT x FROM {database}.t ORDER BY x") == [(1,), (2,)]
    for attempt in (
        lambda: reader.insert("t", ["x"], [(3,)]),
        lambda: reader.insert_rowbinary("t", ["x"], struct.pack("<I", 3)),
        lambda: reader.execute(f"DROP TABLE {database}.t"),
        lambda: reader.execute(f"CREATE TABLE {database}.u (x UInt8) ENGINE = Memory"),
        lambda: reader.execute("SET readonly = 0"),
    ):
        with pytest.raises(StoreMisconfigured) as refused:
            attempt()
        assert refused.value.code == 164, refused.value  # READONLY
    assert writer.query(f"SELECT x FROM {database}.t ORDER BY x") == [(1,), (2,)]
    for store in (reader, writer):
        store.close()


@pytest.mark.integration
def test_a_wrong_password_is_refused_on_both_interfaces(
    server: tuple[ClickHouseService, str],
) -> None:
    service, database = server
    admin = connect(service.url)
    admin.execute(f"CREATE DATABASE {database}")
    admin.close()
    wrong = with_database_url(service.url, database).replace(
        f"{WRITER}:{service.passwords()[WRITER]}@", f"{WRITER}:wrong@"
    )
    assert "wrong" in wrong
    store: ClickHouseStore = connect(wrong)
    with pytest.raises(StoreMisconfigured, match="(?i)password") as native:
        store.query("SELECT 1")
    with pytest.raises(StoreMisconfigured, match="(?i)password") as http:
        store.insert_rowbinary("t", ["x"], b"\0")
    store.close()
    assert "wrong" not in str(native.value) + str(http.value)
    for user in (WRITER, READER):
        assert service.passwords()[user] not in str(native.value)


_TLS = """    <tcp_port_secure>{tcp_secure}</tcp_port_secure>
    <https_port>{https}</https_port>
    <openSSL>
        <server>
            <certificateFile>{cert}</certificateFile>
            <privateKeyFile>{key}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
        </server>
    </openSSL>
</yandex>
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ClickHouseService, int, int, Path]]:
    """A second local server (the stack's config.xml and users.xml) that also listens with TLS
    on its own ports: native (`tcp_port_secure`) and HTTPS, with a certificate of this test."""
    settings = Settings(
        home=tmp_path, clickhouse_port=_free_port(), clickhouse_http_port=_free_port()
    )
    service = ClickHouseService(settings)
    if service.binary is None:
        pytest.fail("clickhouse-server is not installed; make test installs it (as root)")
    made = make_server_certificate(tmp_path)
    cert, key = made.write_pem(tmp_path)
    tcp_secure, https = _free_port(), _free_port()
    for sub in ("data", "tmp", "user_files", "format_schemas", "logs"):
        (service.dir / sub).mkdir(parents=True, exist_ok=True)
    config = _CLICKHOUSE_CONFIG.format(
        dir=service.dir, tcp_port=settings.clickhouse_port, http_port=settings.clickhouse_http_port
    )
    tls = _TLS.format(tcp_secure=tcp_secure, https=https, cert=cert, key=key)
    service.config.write_text(config.replace("</yandex>\n", tls))
    service._write_users()
    service.process.start(
        [service.binary, f"--config-file={service.config}"], log=service.log, cwd=service.dir
    )
    try:
        deadline = time.monotonic() + 60
        while not service.answering():
            assert time.monotonic() < deadline, service.log.read_text()[-2000:]
            time.sleep(0.2)
        yield service, tcp_secure, https, made.ca_file
    finally:
        service.down()


@pytest.mark.integration
def test_both_interfaces_speak_tls_and_check_the_server_s_certificate(
    tls_server: tuple[ClickHouseService, int, int, Path],
) -> None:
    service, tcp_secure, https, ca_file = tls_server
    password = quote(service.passwords()[WRITER], safe="")
    base = f"clickhouse://{WRITER}:{password}@localhost:{tcp_secure}/oms_tls?secure=1&http_port={https}"
    store = connect(f"{base}&ca_certs={ca_file}")
    store.execute("CREATE DATABASE oms_tls")
    store.execute("CREATE TABLE oms_tls.t (x UInt32) ENGINE = Memory")
    store.insert_rowbinary("t", ["x"], struct.pack("<I", 7))  # HTTPS
    assert store.query("SELECT x FROM oms_tls.t") == [(7,)]  # native over TLS
    store.close()
    untrusting = connect(base)  # the system's CAs do not include this test's
    with pytest.raises(StoreMisconfigured, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.query("SELECT 1")
    with pytest.raises(StoreMisconfigured, match="(?i)certificate verify failed"):
        untrusting.insert_rowbinary("t", ["x"], struct.pack("<I", 8))
    untrusting.close()
