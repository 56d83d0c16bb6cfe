"""TLS contexts: the client listener (``listen_tls``) and https:// backends.

This module imports nothing but the standard library and :mod:`proxy.config.schema`, so that the
health checker can build the same backend contexts as the relay.

- :func:`server_context` builds the listener's context: TLS 1.2 or newer, ALPN ``http/1.1``.
- :func:`reload_server_context` loads a renewed certificate into that same live context:
  handshakes from then on use it, established connections keep theirs. The new files are
  validated in a scratch context first, so a bad renewal leaves the old certificate serving.
- :func:`backend_context` builds the context for connections to one https backend.

Every problem with a file is a :class:`TlsError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Final, NoReturn

from mcplb.healthcheck.target import TlsSetupError
from mcplb.proxy.config.schema import BackendConfig, ListenTlsConfig

log = logging.getLogger("mcplb")

ALPN: Final = ["http/1.1"]  # the relay speaks HTTP/1.1 only, never h2
MIN_VERSION: Final = ssl.TLSVersion.TLSv1_2

_warned_insecure: set[tuple[str, str]] = set()  # (name, url) of backends already warned about


class TlsError(TlsSetupError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


# --- the listener ---------------------------------------------------------------------------


def server_context(config: ListenTlsConfig) -> ssl.SSLContext:
    """A server context for the client listener, with ``config.cert`` and ``config.key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(ALPN)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(context, config)
    return context


def reload_server_context(context: ssl.SSLContext, config: ListenTlsConfig) -> None:
    """Load the (renewed) ``config.cert`` and ``config.key`` into the live ``context``.

    New handshakes use the new certificate; established connections are not affected. The
    files are first loaded into a scratch context: if they are bad (unreadable, not PEM, a
    key that does not match), TlsError is raised and ``context`` keeps its old certificate.
    """
    _load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), config)
    try:
        context.load_cert_chain(config.cert, config.key, password=_no_password)
    except (OSError, ssl.SSLError, TlsError) as exc:
        # Only if the files changed again between the check above and this load.
        raise TlsError(
            f"listen_tls: {config.cert} / {config.key} changed while being reloaded "
            f"({_reason(exc)}); reload again once they are complete"
        ) from exc


def _load_cert_chain(context: ssl.SSLContext, config: ListenTlsConfig) -> None:
    """``context.load_cert_chain`` with a TlsError that says which file is wrong and why."""
    cert_pem = _read(config.cert, "listen_tls.cert")
    key_pem = _read(config.key, "listen_tls.key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TlsError(f"listen_tls.cert {config.cert}: no PEM certificate in the file")
    try:  # parses every certificate in the file, without needing the key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError as exc:
        raise TlsError(
            f"listen_tls.cert {config.cert}: not a valid PEM certificate ({_reason(exc)})"
        ) from None
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsError(f"listen_tls.key {config.key}: no PEM private key in the file")
    if b"ENCRYPTED" in key_pem:
        raise TlsError(
            f"listen_tls.key {config.key}: the private key is encrypted "
            "(a passphrase-protected key is not supported)"
        )
    try:
        context.load_cert_chain(config.cert, config.key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"listen_tls.key {config.key}: does not match the certificate "
                f"in {config.cert} (key values mismatch)"
            ) from None
        raise TlsError(
            f"listen_tls.key {config.key}: not a valid PEM private key ({_reason(exc)})"
        ) from None
    except OSError as exc:  # replaced or removed since it was read above
        raise TlsError(f"listen_tls: {config.cert} / {config.key}: {_reason(exc)}") from None


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsError(f"{field} {path}: cannot read it ({_reason(exc)})") from None


def _no_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal for a passphrase and block.
    raise TlsError("the private key is encrypted (a passphrase-protected key is not supported)")


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason in words: "[SSL] PEM lib (_ssl.c:3926)" -> "malformed PEM data"."""
    if isinstance(exc, ssl.SSLError):
        text = exc.reason or exc.strerror or str(exc)
        text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", re.sub(r"^\[\w+\]\s*", "", text))
        if text == "PEM lib" or "no start line" in text or "BAD_BASE64" in text:
            return "malformed PEM data"
        return text.replace("_", " ").lower() if text.isupper() else text
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


# --- backends -------------------------------------------------------------------------------


def backend_context(backend: BackendConfig) -> ssl.SSLContext | None:
    """The client context for connections to ``backend``; None for an http:// backend.

    Verification is on (a trusted chain, and ``backend.host`` in the certificate) against
    ``backend.ca`` when given, else the system's CAs. ``verify: false`` turns it off, which
    is logged as a WARNING on the "mcplb" logger once per backend per process.
    """
    if backend.scheme != "https":
        return None
    if not backend.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _warn_insecure(backend)
    else:
        try:
            context = ssl.create_default_context(cafile=backend.ca)
        except ssl.SSLError as exc:
            _bad_ca(backend, f"not a valid PEM CA bundle ({_reason(exc)})")
        except OSError as exc:
            _bad_ca(backend, f"cannot read it ({_reason(exc)})")
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(ALPN)
    return context


def _bad_ca(backend: BackendConfig, reason: str) -> NoReturn:
    raise TlsError(f"backend {backend.name}: ca {backend.ca}: {reason}") from None


def _warn_insecure(backend: BackendConfig) -> None:
    key = (backend.name, backend.url)
    if key in _warned_insecure:
        return
    _warned_insecure.add(key)
    log.warning(
        "TLS verification is OFF for backend %s (%s): its certificate is not checked, so "
        "anyone on the path can impersonate it",
        backend.name,
        backend.url,
    )
