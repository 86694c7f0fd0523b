"""Keep credentials in tracking URIs out of output, logs, MLflow and files.

A tracking URI may carry a password (``http://user:secret@host:5000``,
``postgresql://user:secret@host/db``) or a secret query value (``?token=...``).  Rules
(docs/sweeps.md, "Credentials"):

- whatever is printed, logged or written to MLflow shows :func:`redact_uri` (password and
  secret query values replaced by ``***``; scheme, user, host, port and path kept);
- what is saved for ``sweep resume`` keeps :func:`without_password`;
- for ``http(s)`` the credentials move into ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` (:func:`use_credentials`), MLflow's own mechanism, so the URI
  that MLflow prints in its messages carries none.

    >>> redact_uri("http://me:secret@mlflow:5000/")
    'http://me:***@mlflow:5000/'
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "credential",
                     "signature", "sig")
"""Query parameters whose values are treated as secrets (substring match, any case)."""
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"

_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"(//[^/@\s:]*):[^/@\s]*@")


def _split(uri: str):
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return None
    return parts


def _rebuild(uri: str, parts, netloc: str, query: str) -> str:
    """``uri`` with its netloc and query replaced, everything else byte for byte
    (``urlunsplit`` would turn ``sqlite:////abs`` into ``sqlite://abs``)."""
    start = uri.index("://") + 3
    rest = uri[start + len(parts.netloc):]
    if query != parts.query:
        rest = rest.replace("?" + parts.query, ("?" + query) if query else "", 1)
    return uri[:start] + netloc + rest


def _netloc(parts, password: str | None) -> str:
    """``user[:password]@host[:port]`` rebuilt from the raw netloc."""
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return hostport
    user = userinfo.partition(":")[0]
    return f"{user}:{password}@{hostport}" if password is not None else f"{user}@{hostport}"


def _query(query: str, replacement: str | None) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    secret = [any(s in k.lower() for s in SECRET_QUERY_KEYS) for k, _ in pairs]
    if not any(secret):
        return query
    return "&".join(f"{quote(k, safe='')}=" + (replacement if hide else quote(v, safe=""))
                    for (k, v), hide in zip(pairs, secret) if not (hide and replacement is None))


def redact_uri(uri: str) -> str:
    """``uri`` for display: the password and secret query values become ``***``."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    parts = _split(uri)
    if parts is None:  # not parseable: mask anything between ':' and '@' after '//'
        return _USERINFO.sub(rf"\1:{MASK}@", uri)
    has_password = "@" in parts.netloc and ":" in parts.netloc.rpartition("@")[0]
    netloc = _netloc(parts, MASK) if has_password else parts.netloc
    return _rebuild(uri, parts, netloc, _query(parts.query, MASK))


def without_password(uri: str) -> str:
    """``uri`` as saved on disk: password and secret query values dropped, user kept."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    parts = _split(uri)
    if parts is None:
        return _USERINFO.sub(r"\1@", uri)
    return _rebuild(uri, parts, _netloc(parts, None), _query(parts.query, None))


def credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(``uri`` without user and password, user, password), both decoded."""
    parts = _split(uri) if isinstance(uri, str) and "://" in uri else None
    if parts is None or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    return (_rebuild(uri, parts, hostport, parts.query), unquote(user) or None,
            unquote(password) if sep else None)


def use_credentials(uri: str) -> str:
    """The URI this process gives MLflow.  For ``http(s)``, user and password move into
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (so MLflow's own messages, which
    print the URI, carry none) and the URI without them is returned.  Database URIs keep
    their password (the driver needs it there) and are only ever shown redacted."""
    if not uri.lower().startswith(("http://", "https://")):
        return uri
    bare, user, password = credentials(uri)
    if user is not None:
        os.environ[USERNAME_ENV] = user
    if password is not None:
        os.environ[PASSWORD_ENV] = password
    return bare


def tracking_env() -> dict[str, str]:
    """The MLflow credential variables set in this process (handed to trial workers)."""
    return {k: os.environ[k] for k in (USERNAME_ENV, PASSWORD_ENV) if os.environ.get(k)}


def redact_text(text: str, *uris: str) -> str:
    """``text`` with every URI in it redacted, and the passwords of ``uris`` masked."""
    out = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    for uri in uris:
        _, _, password = credentials(uri) if isinstance(uri, str) else (None, None, None)
        for secret in {password, quote(password or "", safe="")} - {None, ""}:
            if len(secret) >= 4:
                out = out.replace(secret, MASK)
    secret = os.environ.get(PASSWORD_ENV)
    if secret and len(secret) >= 4:
        out = out.replace(secret, MASK)
    return out
