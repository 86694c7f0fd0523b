"""The MLflow tracking store a sweep writes to: URIs (SQLite paths, write-ahead logging while
a sweep runs), the health check before anything starts, and the client every process uses,
which rides out a tracking-server outage (docs/sweeps.md, Failure handling).

Why a retry loop of our own (:class:`RetryingClient`) on top of MLflow's: the guarantee is
one of *time* (a call to an unreachable tracking server waits up to
``SMARTMIXED_TRACKING_OUTAGE_SECONDS``, 30 minutes, then fails and Ray retries the trial),
and it says what it waits for.  MLflow's own settings retry by *count* with an exponential
backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``), silently; a count that
covered 30 minutes would also make every failing request wait that long.  So MLflow's HTTP
retries are shortened (3, factor 1) and this loop decides how long.  It covers tracking
servers (``http(s)``); a direct database store is not retried.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from smartmixed_core.errors import ConfigError, first_line
from sweeps import schema
from sweeps.redact import credentials, redact_text, redact_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI, percent-decoded as SQLAlchemy reads it
    (None for any other URI, and for an in-memory database)."""
    if not uri.startswith(SQLITE):
        return None
    path = unquote(uri[len(SQLITE):])
    return Path(path) if path and path != ":memory:" else None


def normalize_uri(uri: str) -> str:
    """Make a relative ``sqlite:///x.db`` absolute: trial workers run in other folders."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return SQLITE + quote(str(path.resolve()))


def use_wal(uri: str) -> bool:
    """Switch a SQLite store to write-ahead logging (a setting kept in the file): a commit then
    costs one append instead of rewriting a journal, and readers never block the trials'
    writers.  Best effort (False when the file is busy or not SQLite); readers need no change
    (``mlflow ui`` included).  While a sweep runs, its latest writes sit in ``mlflow.db-wal``
    (with the index ``mlflow.db-shm``) beside the store; :func:`fold_wal` ends that."""
    return _pragma(uri, "journal_mode=WAL") == "wal"


def fold_wal(uri: str) -> bool:
    """After a sweep: close this process's pooled connections to a SQLite store and switch it
    back to a rollback journal, which moves the write-ahead log into ``mlflow.db`` and removes
    ``mlflow.db-wal`` and ``mlflow.db-shm``, so the database file alone holds every run.
    False where that did not happen (not SQLite, or another process, such as ``mlflow ui``,
    still has the store open: its last connection to close removes the files)."""
    path = sqlite_path(uri)
    if path is None:
        return False
    close_stores()
    return _pragma(uri, "journal_mode=DELETE") == "delete"


def close_stores() -> None:
    """Close this process's pooled connections to SQL tracking stores.  MLflow keeps one
    engine per store for the life of the process, and the console exits without closing
    them, so a SQLite store in write-ahead mode would keep its ``-wal`` and ``-shm`` files
    beside it; closed, SQLite removes them (when no other process has the store open).
    The next call through a client opens a new connection."""
    store_module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store_module is None:  # no SQL store was opened by this process
        return
    for engine in list(getattr(store_module.SqlAlchemyStore, "_engine_map", {}).values()):
        engine.dispose()


def _pragma(uri: str, pragma: str) -> str | None:
    """The first value ``PRAGMA <pragma>`` returns on a SQLite store (None: not SQLite, busy)."""
    import sqlite3
    from contextlib import closing

    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(path, timeout=5.0)) as con:
            row = con.execute(f"PRAGMA {pragma}").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]).lower() if row else None


def check_tracking(uri: str, *, existing: bool = False) -> None:
    """Fail with one line, before any work, when ``uri`` cannot be used: a server that does
    not answer ``/health``, a SQLite store whose folder is missing (``existing``: whose file is
    missing, for readers, since MLflow would create an empty store), a folder store."""
    if uri.startswith(("http://", "https://")):
        bare = credentials(uri)[0]  # /health needs no login; urllib cannot parse user:pass@
        try:
            with urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=5) as resp:
                ok = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError("tracking_uri", f"cannot reach the MLflow tracking server at "
                              f"{bare} ({reason}); start it or pass --tracking-uri") from None
        if not ok:
            raise ConfigError("tracking_uri", f"{bare}/health did not answer 200")
    elif (path := sqlite_path(uri)) is not None:
        folder = path.parent
        if existing and not path.is_file():
            raise ConfigError("tracking_uri", f"no SQLite tracking store at {uri!r}")
        if not folder.is_dir():
            raise ConfigError("tracking_uri", f"folder {folder} of the SQLite store does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError("tracking_uri", "MLflow 3 refuses folder stores; use "
                          "sqlite:///path/mlflow.db or http://host:port")


def env_seconds(env: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable ``env``."""
    try:
        return max(0.0, float(os.environ.get(env, default)))
    except ValueError:
        return default


OUTAGE_ENV = "SMARTMIXED_TRACKING_OUTAGE_SECONDS"
"""How long one tracking call keeps retrying while the MLflow server is unreachable (default
30 min; 0 disables retrying)."""
DEFAULT_OUTAGE_SECONDS = 1800.0
MAX_RETRY_WAIT = 15.0
"""Longest pause between two attempts: writes resume within ~20 s of the server's return."""
# MLflow's own HTTP retries (defaults 7 retries, backoff factor 2: ~4 min, pauses up to 2 min)
# are shortened so that an outage reaches the loop below within seconds; users' values win.
_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                         "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def check_server(uri: str, given: str) -> None:
    """The tracking store answers (``uri`` carries no credentials for http; errors show the
    URI redacted)."""
    try:
        check_tracking(uri)
    except ConfigError as exc:
        raise ConfigError(exc.field, redact_text(exc.message, given)) from None


def mlflow_error(exc: BaseException, given: str, what: str) -> ConfigError:
    hint = ("; if the server needs a login set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD" if given.lower().startswith("http") else "")
    return ConfigError("tracking_uri", redact_text(
        f"{what} at {redact_uri(given)}: {first_line(exc)}{hint}", given))


def sqlite_missing(uri: str) -> bool:
    path = sqlite_path(uri)
    return path is not None and not path.exists()


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the tracking server could not be reached:
    connection refused/reset, a timeout, or MLflow's retries exhausted on 5xx/429 answers."""
    import requests

    kinds = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
             requests.exceptions.RetryError)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kinds):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class RetryingClient:
    """An ``MlflowClient`` whose calls ride out an outage of the tracking server.

    A call that fails because the server cannot be reached (:func:`is_outage`) is repeated,
    with pauses of 1, 2, 4, ... up to ``MAX_RETRY_WAIT`` seconds, until it succeeds or
    ``patience`` seconds have passed since its first failure; then the error is raised.  The
    caller just waits meanwhile (a trial's training pauses at its next MLflow write), so
    nothing is lost.  Any other error is raised at once.  Writes are safe to repeat: the server
    either never received a refused request, or deduplicates metrics, overwrites tags and
    artifacts, and rejects nothing that the sweep writes twice.
    """

    def __init__(self, inner: MlflowClient, uri: str, patience: float):
        self._inner, self._uri, self._patience = inner, uri, patience

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            first: float | None = None
            wait = 1.0
            while True:
                try:
                    result = attr(*args, **kwargs)
                except Exception as exc:
                    now = time.monotonic()
                    first = now if first is None else first
                    if not is_outage(exc) or now - first >= self._patience:
                        raise
                    if wait == 1.0:
                        _say(f"MLflow tracking server {self._uri} unreachable ({name}: "
                             f"{_short_reason(exc)}); retrying for up to "
                             f"{self._patience:.0f} s ({OUTAGE_ENV})")
                    time.sleep(min(wait, max(0.0, self._patience - (now - first))))
                    wait = min(wait * 2, MAX_RETRY_WAIT)
                    continue
                if first is not None:
                    _say(f"MLflow tracking server {self._uri} reachable again after "
                         f"{time.monotonic() - first:.0f} s ({name})")
                return result

        return call


def _short_reason(exc: BaseException) -> str:
    cur: BaseException | None = exc
    while cur.__cause__ is not None or cur.__context__ is not None:
        cur = cur.__cause__ or cur.__context__
    return f"{type(cur).__name__}: {str(cur)[:120]}"


def _say(message: str) -> None:
    print(f"smartmixed: {message}", file=sys.stderr, flush=True)


def client(uri: str) -> MlflowClient:
    """A thread-safe client for ``uri``; for a tracking server, one that rides out outages of
    up to :data:`OUTAGE_ENV` seconds (see :class:`RetryingClient`)."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith(("http://", "https://")):
        for key, value in _MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        patience = env_seconds(OUTAGE_ENV, DEFAULT_OUTAGE_SECONDS)
        if patience > 0:
            return RetryingClient(MlflowClient(tracking_uri=uri), uri, patience)  # type: ignore[return-value]
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(c: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created (driver only) with an absolute artifact root for SQLite,
    as a model-development experiment (MLflow's UI then opens it on the runs table)."""
    kind = {schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND}
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if schema.TAG_EXPERIMENT_KIND not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, *next(iter(kind.items())))
        return exp.experiment_id
    path = sqlite_path(uri)
    location = None if path is None else (path.parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location, tags=kind)
