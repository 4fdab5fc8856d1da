"""One ClickHouse interface with two backends: a server (clickhouse-driver) and embedded chDB.

SQL sent through either must run on ClickHouse 18.16 and on current ClickHouse
(docs/architecture.md, "ClickHouse: one interface, two backends").
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import select
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable
from urllib.parse import (
    parse_qs,
    parse_qsl,
    quote,
    unquote,
    urlencode,
    urlparse,
    urlsplit,
    urlunsplit,
)

Row = tuple[Any, ...]


def sql_string(value: str) -> str:
    """A SQL string literal, escaped for ClickHouse."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StoreError(RuntimeError):
    """A ClickHouse statement failed; the message carries the server's reason, `code` its
    error code where it gave one. Neither of the subclasses: most likely a bug of ours."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """ClickHouse could not be reached, or could not take the statement right now (restarting,
    overloaded, out of memory): the same statement may work later. Whether a statement that
    failed so took effect is not known (an INSERT may have landed before the connection broke)."""


class StoreMisconfigured(StoreError):
    """The URL, the credentials or the database's tables do not fit this program: trying again
    will not help until someone changes them."""


# ClickHouse error codes (src/Common/ErrorCodes.cpp) that mean "not now": the server is going
# away or coming up, overloaded, or short of memory, disk or parts headroom.
_UNAVAILABLE_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED (a server shutting down cancels what runs)
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        999,  # KEEPER_EXCEPTION
    }
)
# Codes that mean the URL, the user or the schema is wrong: a table or column this program
# writes is missing (the database is not the one `oms project --migrate` made), or the server
# refuses the user.
_MISCONFIGURED_CODES = frozenset(
    {
        8,  # THERE_IS_NO_COLUMN
        10,  # NOT_FOUND_COLUMN_IN_BLOCK
        16,  # NO_SUCH_COLUMN_IN_TABLE
        60,  # UNKNOWN_TABLE
        81,  # UNKNOWN_DATABASE
        164,  # READONLY
        192,  # UNKNOWN_USER
        193,  # WRONG_PASSWORD
        194,  # REQUIRED_PASSWORD
        195,  # IP_ADDRESS_NOT_ALLOWED
        291,  # DATABASE_ACCESS_DENIED
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
    }
)
_CODE = re.compile(r"\bCode: (\d+)")


def store_error(message: str, *, code: int | None = None) -> StoreError:
    """The StoreError for a failure with ClickHouse's error `code` (read from `message` when
    not given: "Code: 60. ..." from the driver, "Code: 60, e.displayText() = ..." over HTTP)."""
    if code is None:
        found = _CODE.search(message)
        code = int(found.group(1)) if found else None
    if "CERTIFICATE_VERIFY_FAILED" in message:  # the driver's NETWORK_ERROR: not a passing one
        return StoreMisconfigured(message, code=code)
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(message, code=code)
    if code in _MISCONFIGURED_CODES:
        return StoreMisconfigured(message, code=code)
    return StoreError(message, code=code)


class ClickHouseStore(Protocol):
    database: str
    # Whether `insert_rowbinary` may be called from several threads at once.
    parallel_inserts: bool

    def execute(self, sql: str) -> None: ...

    def query(self, sql: str) -> list[Row]: ...

    def query_with_columns(self, sql: str) -> tuple[list[str], list[Row]]:
        """The rows and the names of their columns."""
        ...

    def with_database(self, database: str) -> ClickHouseStore:
        """The same ClickHouse, another database (rebuilds write into a staging one)."""
        ...

    def limit_queries(self, *, max_execution_s: int, max_rows_to_read: int) -> None:
        """Every later query of this store stops (an error) past these limits: for stores
        that answer callers (the read API), so one request cannot hold the server."""
        ...

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        where: str | None = None,
        quorum: int = 0,
    ) -> None:
        """One INSERT of `rows`. With `where` (a condition on the columns), the server keeps
        only the rows that meet it when it runs the INSERT (the rows go as a temporary table and
        the INSERT selects from it): a fenced write (projections/lease.py). With `quorum`, into
        a replicated table: it returns once that many replicas hold the rows (else an error)."""
        ...

    def insert_rowbinary(
        self, table: str, columns: Sequence[str], data: bytes, *, where: str | None = None
    ) -> None:
        """One INSERT of rows already in ClickHouse's RowBinary format (columns in this order);
        `where` as `insert`'s."""
        ...

    def settle(self, *, replicas: Sequence[str] = ()) -> None:
        """Return once every INSERT into the database that was running when it was called has
        ended (a server may go on writing what it received after the connection that sent it
        broke): only then do the tables hold what they will hold. StoreUnavailable if one still
        runs after a while. `replicas` (host:port of each, this one's too): on every one."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RowBinarySource(Protocol):
    """A store that reads rows out as RowBinary, the counterpart of `insert_rowbinary`: both
    backends (projections/backup.py copies tables with it)."""

    def query_rowbinary(self, sql: str) -> bytes: ...


@dataclass(frozen=True)
class Credentials:
    """Who a server store connects as, and whether over TLS: from the URL's user, password,
    `secure=1` and `ca_certs=/path` (trust those CAs instead of the system's). The same user
    and password go to the native protocol and, as HTTP basic authentication (which 18.16
    reads, as current servers do), to the HTTP interface; TLS to both or neither."""

    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    ca_certs: str | None = None

    def http_headers(self) -> dict[str, str]:
        if self.user == "default" and not self.password:
            return {}
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def http_connection(self, host: str, port: int) -> http.client.HTTPConnection:
        if not self.secure:
            return http.client.HTTPConnection(host, port, timeout=3)
        context = ssl.create_default_context(cafile=self.ca_certs)
        return http.client.HTTPSConnection(host, port, timeout=3, context=context)


class ServerStore:
    """A ClickHouse server over the native protocol; rows are passed as parameters, never
    formatted into SQL text.
    Rows already in RowBinary go over its HTTP interface (`http_port`), which takes raw bytes."""

    parallel_inserts = True  # one HTTP connection per thread

    def __init__(
        self,
        *,
        host: str,
        port: int,
        database: str,
        http_port: int = 8123,
        credentials: Credentials | None = None,
    ) -> None:
        from clickhouse_driver import Client

        # The driver logs each failed connect with a traceback; the StoreUnavailable raised
        # here says the same once, to whoever decides what to do about it.
        logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
        self.database = database
        self._address = (host, port)
        self._http_port = http_port
        self._credentials = credentials or Credentials()
        # One keep-alive HTTP connection per thread: http.client connections are not shareable.
        self._http = threading.local()
        self._http_connections: list[http.client.HTTPConnection] = []
        self._http_lock = threading.Lock()
        self._utc: bool | None = None  # whether the server's time zone is UTC (asked once)
        self._datetime_columns: dict[str, frozenset[str]] = {}
        self._column_types: dict[str, dict[str, str]] = {}
        self._client = Client(
            host=host,
            port=port,
            user=self._credentials.user,
            password=self._credentials.password,
            secure=self._credentials.secure,
            verify=True,
            ca_certs=self._credentials.ca_certs,
            connect_timeout=3,
            send_receive_timeout=120,
            settings={"use_numpy": False},
        )

    def execute(self, sql: str) -> None:
        self._run(sql)

    def query(self, sql: str) -> list[Row]:
        return [_naive_utc(row) for row in self._run(sql)]

    def query_with_columns(self, sql: str) -> tuple[list[str], list[Row]]:
        rows, types = self._run(sql, with_column_types=True)
        return [name for name, _ in types], [_naive_utc(row) for row in rows]

    def with_database(self, database: str) -> ServerStore:
        host, port = self._address
        return ServerStore(
            host=host,
            port=port,
            database=database,
            http_port=self._http_port,
            credentials=self._credentials,
        )

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        where: str | None = None,
        quorum: int = 0,
    ) -> None:
        """One INSERT of `rows`, sent column by column: the rows are transposed here in C
        (`zip`) rather than by the driver in Python, and naive DateTimes go as the epoch seconds
        the driver would compute from them (ClickHouse reads a naive time in the server's time
        zone; converted here only when that is UTC, else left to the driver). With `where`, the
        rows go as the query's external table `_rows`, which the INSERT selects from."""
        if not rows:
            return
        data = [list(column) for column in zip(*rows, strict=True)]
        if self._server_is_utc():
            datetimes = self._datetimes_of(table)
            for i, name in enumerate(columns):
                if name in datetimes:
                    data[i] = _epoch_seconds(data[i])
        names = ", ".join(columns)
        if where is None:
            self._run(
                f"INSERT INTO {self.database}.{table} ({names}) VALUES",
                data,
                columnar=True,
                settings=_quorum(quorum),
            )
            return
        external = {
            "name": "_rows",
            "structure": self._types_of(table, columns),
            "data": list(zip(*data, strict=True)),
        }
        self._run(
            f"INSERT INTO {self.database}.{table} ({names}) SELECT {names} FROM _rows "
            f"WHERE {where}",
            external_tables=[external],
            settings=ONE_PART | (_quorum(quorum) or {}),
        )

    def insert_rowbinary(
        self, table: str, columns: Sequence[str], data: bytes, *, where: str | None = None
    ) -> None:
        """One INSERT of rows already in ClickHouse's RowBinary format (columns in this order),
        POSTed as-is to the HTTP interface: the native protocol would want them as Python values.
        With `where`, the bytes go as the query's external data `_rows` (a multipart body),
        which the INSERT selects from."""
        if not data:
            return
        names = ", ".join(columns)
        if where is None:
            sql = f"INSERT INTO {self.database}.{table} ({names}) FORMAT RowBinary"
            status, body = self._post(sql, data)
        else:
            sql = (
                f"INSERT INTO {self.database}.{table} ({names}) SELECT {names} FROM _rows "
                f"WHERE {where}"
            )
            structure = ", ".join(f"{n} {t}" for n, t in self._types_of(table, columns))
            params = {"_rows_format": "RowBinary", "_rows_structure": structure}
            status, body = self._post(sql, data, external=params | ONE_PART)
        if status != 200:
            # 18.16 appends the server's stack trace to every message; the reason is above it.
            reason = body.decode(errors="replace").split("Stack trace:", 1)[0].strip()
            error = store_error(f"{reason or f'HTTP {status}'} -- in: {sql[:200]}")
            if status == 503 and not isinstance(error, StoreUnavailable):
                error = StoreUnavailable(str(error), code=error.code)
            raise error

    def _post(
        self, sql: str, data: bytes, *, external: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """The status and body of a POST of `data` with `sql` as its query, on this thread's
        keep-alive connection; with `external` (the URL's other parameters), `data` goes as
        the external table `_rows` of a multipart body. Nothing is retried here: when the
        connection breaks, the server may or may not have taken the INSERT, and only the caller
        can find out which (the projector reads what the tables hold, docs/read-models.md)."""
        path = "/?query=" + quote(sql, safe="")
        body: Any = data
        headers = {"Content-Type": "application/octet-stream"}
        if external is not None:
            path += "&" + urlencode(external)
            boundary = uuid.uuid4().hex
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="_rows"; '
                'filename="_rows"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            tail = f"\r\n--{boundary}--\r\n".encode()
            body = (head, data, tail)  # sent part by part: the rows are not copied
            size = len(head) + memoryview(data).nbytes + len(tail)
            headers = {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(size),
            }
        headers |= self._credentials.http_headers()
        try:
            connection = self._http_connection()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except ssl.SSLCertVerificationError as exc:
            self._drop_http_connection()
            host, _ = self._address
            raise StoreMisconfigured(
                f"ClickHouse HTTPS interface at {host}:{self._http_port}: {exc} (ca_certs in "
                f"the URL names the CAs to trust) -- in: {sql[:200]}"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop_http_connection()
            host, _ = self._address
            raise StoreUnavailable(
                f"ClickHouse HTTP interface at {host}:{self._http_port}: {exc!r} -- in: {sql[:200]}"
            ) from exc

    def _http_connection(self) -> http.client.HTTPConnection:
        """This thread's connection: the one it had, unless the server has closed it since (it
        closes a keep-alive connection idle for 3 s on 18.16), else a new one."""
        connection: http.client.HTTPConnection | None = getattr(self._http, "connection", None)
        if connection is not None and connection.sock is not None and _open(connection.sock):
            return connection
        if connection is not None:  # closed by the server, or by http.client
            self._drop_http_connection()
        host, _ = self._address
        connection = self._credentials.http_connection(host, self._http_port)
        connection.connect()  # within 3 s, as the native client; then as long as a query may
        assert connection.sock is not None
        connection.sock.settimeout(120)
        # http.client sends the headers and a non-bytes body (the fold's RowBinary buffers) in
        # two writes; with Nagle's algorithm the second waited for the server's delayed ACK,
        # 40 ms per INSERT, which made a small batch take a quarter of a second.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._http.connection = connection
        with self._http_lock:
            self._http_connections.append(connection)
        return connection

    def _drop_http_connection(self) -> None:
        connection = getattr(self._http, "connection", None)
        self._http.connection = None
        if connection is not None:
            connection.close()
            with self._http_lock:
                if connection in self._http_connections:
                    self._http_connections.remove(connection)

    def _types_of(self, table: str, columns: Sequence[str]) -> list[tuple[str, str]]:
        """The ClickHouse type of each of `columns` (read once per table, again for a column
        new to it, as after a migration). Asked over this thread's HTTP connection: the native
        client is not to be used by two threads at once, and a batch's INSERTs run in several."""
        types = self._column_types.get(table)
        if types is None or any(name not in types for name in columns):
            sql = (
                "SELECT name, type FROM system.columns WHERE database = "
                f"{sql_string(self.database)} AND table = {sql_string(table)} "
                "FORMAT TabSeparated"
            )
            status, body = self._post(sql, b"")
            if status != 200:
                reason = body.decode(errors="replace").split("Stack trace:", 1)[0].strip()
                raise store_error(f"{reason or f'HTTP {status}'} -- in: {sql[:200]}")
            lines = body.decode().splitlines()
            types = dict(line.split("\t", 1) for line in lines if line)
            self._column_types[table] = types
        missing = [name for name in columns if name not in types]
        if missing:
            raise StoreMisconfigured(
                f"no column {', '.join(missing)} in table {self.database}.{table}"
            )
        return [(name, types[name]) for name in columns]

    def _datetimes_of(self, table: str) -> frozenset[str]:
        """The table's columns of type DateTime without a time zone of their own."""
        if table not in self._datetime_columns:
            rows = self._run(
                "SELECT name FROM system.columns WHERE database = "
                f"{sql_string(self.database)} AND table = {sql_string(table)} "
                "AND type IN ('DateTime', 'Nullable(DateTime)')"
            )
            self._datetime_columns[table] = frozenset(str(name) for (name,) in rows)
        return self._datetime_columns[table]

    def _server_is_utc(self) -> bool:
        if self._utc is None:
            self._utc = str(self._run("SELECT timezone()")[0][0]) in ("UTC", "Etc/UTC")
        return self._utc

    def _run(
        self,
        sql: str,
        params: Any = None,
        *,
        with_column_types: bool = False,
        columnar: bool = False,
        external_tables: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        from clickhouse_driver.errors import Error

        try:
            return self._client.execute(
                sql,
                params,
                with_column_types=with_column_types,
                columnar=columnar,
                external_tables=external_tables,
                settings=settings,
            )
        except Error as exc:
            # 18.16 appends the server's stack trace to every message; the reason is above it.
            reason = str(exc).split("Stack trace:", 1)[0].strip()
            raise store_error(f"{reason} -- in: {sql[:200]}", code=exc.code) from exc
        except (OSError, EOFError) as exc:  # the connection broke mid-statement
            host, port = self._address
            raise StoreUnavailable(
                f"ClickHouse at {host}:{port}: {exc!r} -- in: {sql[:200]}"
            ) from exc

    def query_rowbinary(self, sql: str) -> bytes:
        """The rows `sql` selects in ClickHouse's RowBinary format (the bytes insert_rowbinary
        takes), read whole over the HTTP interface: exact, whatever the types."""
        status, body = self._post(f"{sql} FORMAT RowBinary", b"")
        if status != 200:
            reason = body.decode(errors="replace").split("Stack trace:", 1)[0].strip()
            raise store_error(f"{reason or f'HTTP {status}'} -- in: {sql[:200]}")
        return body

    def settle(self, *, timeout_s: float = 10.0, replicas: Sequence[str] = ()) -> None:
        # The INSERTs running now, by id: those that start later are not waited for, so other
        # writers of the database (projectors of other partitions) cannot keep this waiting.
        inserting = sql_string(f"INSERT INTO {self.database}.")
        processes = "system.processes"
        if replicas:  # each address a shard of its own: remote() asks every one
            user, password = self._credentials.user, self._credentials.password
            processes = (
                f"remote({sql_string(','.join(replicas))}, system.processes, "
                f"{sql_string(user)}, {sql_string(password)})"
            )
        running = self._run(
            f"SELECT query_id FROM {processes} WHERE position(query, {inserting}) = 1"
        )
        deadline = time.monotonic() + timeout_s
        while running:
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"{len(running)} INSERT(s) into {self.database} still running on the server "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(0.1)
            ids = ", ".join(sql_string(str(query_id)) for (query_id,) in running)
            running = self._run(f"SELECT query_id FROM {processes} WHERE query_id IN ({ids})")

    def limit_queries(self, *, max_execution_s: int, max_rows_to_read: int) -> None:
        self._client.settings.update(
            {"max_execution_time": max_execution_s, "max_rows_to_read": max_rows_to_read}
        )

    def close(self) -> None:
        self._client.disconnect()
        with self._http_lock:
            connections, self._http_connections = self._http_connections, []
        for connection in connections:
            connection.close()


def _open(sock: socket.socket) -> bool:
    """Whether the peer has not closed this idle connection: nothing to read on it (a closed
    one reads as its end; an idle HTTP connection has nothing else to read)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def _epoch_seconds(column: list[Any]) -> list[Any]:
    """Naive (UTC) or aware datetimes as whole epoch seconds, what a DateTime column holds."""
    return [
        None
        if value is None
        else (value - _EPOCH) // _SECOND
        if type(value) is datetime and value.tzinfo is None
        else (value - _EPOCH_UTC) // _SECOND
        if type(value) is datetime
        else value
        for value in column
    ]


def _naive_utc(row: Sequence[Any]) -> Row:
    # A DateTime with a time zone in its type (toStartOfMinute on 18.16 returns one) comes back
    # aware; both backends hand out naive UTC so that results compare equal.
    return tuple(
        v.astimezone(UTC).replace(tzinfo=None)
        if isinstance(v, datetime) and v.tzinfo is not None
        else v
        for v in row
    )


_SESSIONS: dict[str, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _chdb_session(path: str) -> Any:
    # chDB allows one session per path in a process; share it between stores.
    from chdb import session

    with _SESSIONS_LOCK:
        if path not in _SESSIONS:
            _SESSIONS[path] = session.Session(path)
        return _SESSIONS[path]


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return value


class EmbeddedStore:
    """ClickHouse in-process (chDB); data persists at `path`. Inserts go as JSONEachRow."""

    parallel_inserts = False  # one chDB session per path, shared

    def __init__(self, *, path: str, database: str) -> None:
        self.database = database
        self._path = path
        self._session = _chdb_session(path)
        self._column_types: dict[str, dict[str, str]] = {}

    def execute(self, sql: str) -> None:
        self._run(sql, "CSV")

    def query(self, sql: str) -> list[Row]:
        return self.query_with_columns(sql)[1]

    def query_with_columns(self, sql: str) -> tuple[list[str], list[Row]]:
        # A query that already ends in SETTINGS gets the JSON setting appended to its list.
        glue = ", " if _ENDS_WITH_SETTINGS.search(sql) else "\nSETTINGS "
        result = self._run(
            sql.rstrip().rstrip(";") + glue + "output_format_json_quote_64bit_integers = 0",
            "JSONCompact",
        )
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        if not text.strip():
            return [], []
        payload = json.loads(text)
        converters = [_converter(col["type"]) for col in payload["meta"]]
        rows = [
            tuple(conv(v) for conv, v in zip(converters, row, strict=True))
            for row in payload["data"]
        ]
        return [col["name"] for col in payload["meta"]], rows

    def with_database(self, database: str) -> EmbeddedStore:
        return EmbeddedStore(path=self._path, database=database)

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        where: str | None = None,
        quorum: int = 0,  # (never replicated: one process's own tables)
    ) -> None:
        if not rows:
            return
        body = "\n".join(
            json.dumps(
                {c: _json_value(v) for c, v in zip(columns, row, strict=True)}, ensure_ascii=False
            )
            for row in rows
        )
        if where is None:
            self._run(
                f"INSERT INTO {self.database}.{table} ({', '.join(columns)}) "
                f"FORMAT JSONEachRow\n{body}",
                "CSV",
            )
            return
        self._insert_from_file(table, columns, body.encode(), "JSONEachRow", where)

    def insert_rowbinary(
        self, table: str, columns: Sequence[str], data: bytes, *, where: str | None = None
    ) -> None:
        """One INSERT of rows already in ClickHouse's RowBinary format (columns in this order).
        chDB takes statements as text, so the bytes go through a file of this call only, read
        by file() with the columns' types."""
        if not data:
            return
        self._insert_from_file(table, columns, data, "RowBinary", where)

    def _insert_from_file(
        self, table: str, columns: Sequence[str], data: bytes, fmt: str, where: str | None
    ) -> None:
        structure = ", ".join(f"{name} {kind}" for name, kind in self._types_of(table, columns))
        condition = "" if where is None else f" WHERE {where}"
        with tempfile.TemporaryDirectory(prefix="oms-rows-") as directory:
            path = os.path.join(os.path.abspath(directory), "rows")
            with open(path, "wb") as file:
                file.write(data)
            self._run(
                f"INSERT INTO {self.database}.{table} ({', '.join(columns)}) SELECT * FROM "
                f"file({sql_string(path)}, {sql_string(fmt)}, {sql_string(structure)})"
                f"{condition}",
                "CSV",
            )

    def _types_of(self, table: str, columns: Sequence[str]) -> list[tuple[str, str]]:
        """The ClickHouse type of each of `columns`, read from system.columns once per table
        (again if a column is new to it, as after a migration that added one)."""
        types = self._column_types.get(table)
        if types is None or any(name not in types for name in columns):
            rows = self.query(
                "SELECT name, type FROM system.columns WHERE database = "
                f"{sql_string(self.database)} AND table = {sql_string(table)}"
            )
            if not rows:
                raise StoreError(f"Table {self.database}.{table} doesn't exist")
            types = self._column_types[table] = {str(name): str(kind) for name, kind in rows}
        missing = [name for name in columns if name not in types]
        if missing:
            raise StoreError(f"no column {', '.join(missing)} in table {self.database}.{table}")
        return [(name, types[name]) for name in columns]

    def _run(self, sql: str, fmt: str) -> Any:
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:  # chdb raises its own error types
            raise store_error(f"{exc} -- in: {sql[:200]}") from exc

    def query_rowbinary(self, sql: str) -> bytes:
        """The rows `sql` selects in ClickHouse's RowBinary format (the bytes insert_rowbinary
        takes)."""
        result = self._run(sql, "RowBinary")
        return bytes(result.bytes()) if hasattr(result, "bytes") else bytes(result)

    def settle(self, *, replicas: Sequence[str] = ()) -> None:
        return None  # in-process: every statement has ended when its call returns

    def limit_queries(self, *, max_execution_s: int, max_rows_to_read: int) -> None:
        """Not applied: chDB runs inside the calling process, whose own limits bound it; a
        read API that faces users reads a server (OMS_CLICKHOUSE_READ_URL)."""

    def close(self) -> None:
        # The session is shared per path and lives as long as the process.
        return None


# A fenced INSERT (`where`) selects its rows from a temporary table: what the server squashes
# into one block, and so writes as one part (as a plain INSERT of under a million rows is),
# however many rows or bytes the batch holds. One part is what makes an INSERT all or nothing.
ONE_PART = {"min_insert_block_size_rows": 10**12, "min_insert_block_size_bytes": 10**15}
QUORUM_TIMEOUT_MS = 10_000


def _quorum(replicas: int) -> dict[str, int] | None:
    """An INSERT's settings for a write that counts once `replicas` replicas hold it."""
    if replicas <= 1:
        return None
    return {"insert_quorum": replicas, "insert_quorum_timeout": QUORUM_TIMEOUT_MS}


_ENDS_WITH_SETTINGS = re.compile(r"\bSETTINGS\s+\w+\s*=\s*[^()]*$", re.IGNORECASE)


def _converter(ch_type: str) -> Any:
    base = ch_type.removeprefix("Nullable(")[:-1] if ch_type.startswith("Nullable(") else ch_type
    if base.startswith(("UInt", "Int")):
        return lambda v: None if v is None else int(v)
    if base.startswith("Float"):
        return lambda v: None if v is None else float(v)
    if base.startswith("DateTime"):
        return lambda v: None if v is None else datetime.strptime(v[:19], "%Y-%m-%d %H:%M:%S")
    if base.startswith("Array(DateTime"):
        return lambda v: [datetime.strptime(x[:19], "%Y-%m-%d %H:%M:%S") for x in v]
    return lambda v: v


def connect(url: str) -> ClickHouseStore:
    """`clickhouse://host:port/db[?http_port=8123]` → a server (native protocol on `port`, its
    HTTP interface on `http_port` for RowBinary inserts); `chdb:///path[?database=db]` →
    embedded.

    chDB holds one data path per process, so several embedded stores share a path and differ
    by database.
    """
    parsed = urlparse(url)
    if parsed.scheme == "clickhouse":
        query = parse_qs(parsed.query)
        credentials = _credentials(parsed.username, parsed.password, query, shown=redacted(url))
        default_http_port = "8443" if credentials.secure else "8123"
        http_port = query.get("http_port", [default_http_port])[0]
        if not http_port.isdigit():
            raise StoreMisconfigured(
                f"http_port in ClickHouse URL {redacted(url)!r} is not a port number"
            )
        return ServerStore(
            host=parsed.hostname or "localhost",
            port=parsed.port or (9440 if credentials.secure else 9000),
            database=parsed.path.strip("/") or "oms",
            http_port=int(http_port),
            credentials=credentials,
        )
    if parsed.scheme == "chdb":
        if parsed.username or parsed.password:
            # Refused, not ignored: whoever put a (read-only) user in the URL expects its
            # limits, and chDB, inside this process, has no users to apply them.
            raise StoreMisconfigured(
                f"{redacted(url)!r}: embedded chDB has no users; a user and password in its URL "
                "would not be checked (use a clickhouse:// server for read-only access)"
            )
        database = parse_qs(parsed.query).get("database", ["oms"])[0]
        return EmbeddedStore(path=parsed.path, database=database)
    raise _unsupported(url)


def _credentials(
    user: str | None, password: str | None, query: dict[str, list[str]], *, shown: str
) -> Credentials:
    secure = query.get("secure", ["0"])[0].lower()
    if secure not in ("0", "1", "true", "false"):
        raise StoreMisconfigured(f"secure in ClickHouse URL {shown!r} must be 1 or 0")
    return Credentials(
        user=unquote(user) if user else "default",
        password=unquote(password) if password else "",
        secure=secure in ("1", "true"),
        ca_certs=query.get("ca_certs", [None])[0],
    )


def redacted(url: str) -> str:
    """`url` without its password, for messages and status lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def with_database_url(url: str, database: str) -> str:
    """`url` with another database of the same ClickHouse; the rest (the server's HTTP port,
    chDB's path) kept."""
    parts = urlsplit(url)
    if parts.scheme == "clickhouse":
        return urlunsplit(parts._replace(path=f"/{database}"))
    if parts.scheme == "chdb":
        query = [
            (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "database"
        ]
        # Built by hand: urlunsplit would drop the empty host of chdb:///path.
        return f"chdb://{parts.netloc}{parts.path}?{urlencode([*query, ('database', database)])}"
    raise _unsupported(url)


def _unsupported(url: str) -> StoreError:
    return StoreMisconfigured(
        f"unsupported ClickHouse URL {redacted(url)!r}: use clickhouse://host:port/db or "
        "chdb:///path"
    )
