"""TLS contexts: the client listener (``listen_tls``) and https:// backends.

This module imports nothing but the standard library and :mod:`proxy.config.schema`, so that the
health checker can build the same backend contexts as the relay.

- :func:`server_context` builds the listener's context: TLS 1.2 or newer, ALPN ``http/1.1``.
- :func:`reload_server_context` gives that same live context a renewed certificate and client
  CA (a new context it switches each handshake to): handshakes from then on use them,
  established connections keep theirs. A bad renewal leaves the old certificate serving.
- :func:`backend_context` builds the context for connections to one https backend.

Every problem with a file is a :class:`TlsError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Final, NoReturn, TypeVar

from mcplb.healthcheck.target import TlsSetupError
from mcplb.proxy.config.schema import BackendConfig, BackendTlsConfig, ListenTlsConfig

log = logging.getLogger("mcplb")

ALPN: Final = ["http/1.1"]  # the relay speaks HTTP/1.1 only, never h2
MIN_VERSION: Final = ssl.TLSVersion.TLSv1_2

_warned_insecure: set[tuple[str, str]] = set()  # (name, url) of backends already warned about


class TlsError(TlsSetupError):
    """A certificate, key or CA file cannot be used; the message names the file and why.
    ``setting``: the key that names the file ("cert", "client_ca", "client_key"...), if one."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


# --- the listener ---------------------------------------------------------------------------


class ListenerContext(ssl.SSLContext):
    """The listener's context. Each handshake switches to ``current`` from the SNI callback
    (which OpenSSL calls for every ClientHello, with or without a name), so a reload
    replaces the certificate and the trusted client CAs whole: a CA taken out of
    ``client_ca`` stops being trusted, which loading files into a live context cannot do.
    Whether a client certificate is asked for is this context's own ``verify_mode``."""

    current: ssl.SSLContext


def server_context(config: ListenTlsConfig) -> ssl.SSLContext:
    """A server context for the client listener, with ``config.cert`` and ``config.key``;
    with ``config.client_ca``, clients must present a certificate that CA issued."""
    context = _listener_context(ListenerContext, config)
    context.current = context
    context.sni_callback = _use_current
    return context


def _use_current(
    connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext
) -> None:
    if isinstance(context, ListenerContext) and context.current is not context:
        connection.context = context.current


_C = TypeVar("_C", bound=ssl.SSLContext)


def _listener_context(cls: type[_C], config: ListenTlsConfig) -> _C:
    """A server context (TLS 1.2+, ALPN http/1.1) with the certificate, key and client CA
    of ``config``; TlsError names a file that cannot be used."""
    context = cls(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(ALPN)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(context, config.cert, config.key, "listen_tls.cert", "listen_tls.key")
    if config.client_ca is not None:
        _load_ca(context, config.client_ca, "listen_tls.client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def reload_server_context(context: ssl.SSLContext, config: ListenTlsConfig) -> None:
    """Apply the (renewed) ``config.cert``, ``config.key`` and ``config.client_ca`` to the
    live ``context`` (made by :func:`server_context`).

    New handshakes use them; established connections are not affected. The files are
    loaded into a new context first: if they are bad (unreadable, not PEM, a key that does
    not match), TlsError is raised and ``context`` keeps serving what it served.
    """
    if not isinstance(context, ListenerContext):
        raise TypeError("reload_server_context needs a context made by server_context")
    renewed = _listener_context(ssl.SSLContext, config)
    context.current = renewed
    context.verify_mode = renewed.verify_mode


def _load_cert_chain(
    context: ssl.SSLContext, cert: str, key: str, cert_field: str, key_field: str
) -> None:
    """``context.load_cert_chain`` with a TlsError that says which file is wrong and why;
    ``cert_field``, ``key_field``: the settings that name the files, for messages."""
    cert_setting, key_setting = _setting(cert_field), _setting(key_field)
    cert_pem = _read(cert, cert_field, cert_setting)
    key_pem = _read(key, key_field, key_setting)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TlsError(f"{cert_field} {cert}: no PEM certificate in the file", cert_setting)
    try:  # parses every certificate in the file, without needing the key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError as exc:
        raise TlsError(
            f"{cert_field} {cert}: not a valid PEM certificate ({_reason(exc)})", cert_setting
        ) from None
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsError(f"{key_field} {key}: no PEM private key in the file", key_setting)
    if b"ENCRYPTED" in key_pem:
        raise TlsError(
            f"{key_field} {key}: the private key is encrypted "
            "(a passphrase-protected key is not supported)",
            key_setting,
        )
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"{key_field} {key}: does not match the certificate "
                f"in {cert} (key values mismatch)",
                key_setting,
            ) from None
        raise TlsError(
            f"{key_field} {key}: not a valid PEM private key ({_reason(exc)})", key_setting
        ) from None
    except OSError as exc:  # replaced or removed since it was read above
        raise TlsError(f"{cert_field}: {cert} / {key}: {_reason(exc)}", cert_setting) from None


def _load_ca(context: ssl.SSLContext, path: str, field: str) -> None:
    """Trust the CAs of the PEM bundle ``path`` (named ``field`` in messages)."""
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        reason = f"not a valid PEM CA bundle ({_reason(exc)})"
        raise TlsError(f"{field} {path}: {reason}", _setting(field)) from None
    except OSError as exc:
        reason = f"cannot read it ({_reason(exc)})"
        raise TlsError(f"{field} {path}: {reason}", _setting(field)) from None


def _setting(field: str) -> str:
    """The key a message's field names: "listen_tls.cert" -> "cert", "backend a: ca" -> "ca"."""
    return field.rpartition(" ")[2].rpartition(".")[2]


def _read(path: str, field: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsError(f"{field} {path}: cannot read it ({_reason(exc)})", setting) from None


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


def backend_context(
    backend: BackendConfig, shared: BackendTlsConfig | None = None
) -> ssl.SSLContext | None:
    """The client context for connections to ``backend``; None for an http:// backend.

    Verification is on (a trusted chain, and ``backend.host`` in the certificate) against
    ``backend.ca`` when given, else ``shared.ca`` (``backend_tls``), else the system's CAs.
    ``verify: false`` turns it off, which is logged as a WARNING on the "mcplb" logger once
    per backend per process. The client certificate (mTLS) is the backend's own, else the
    shared one. Every call reads the files again: a reload renews a rotated certificate.
    """
    if backend.scheme != "https":
        return None
    if not backend.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _warn_insecure(backend)
    else:
        ca = backend.ca if backend.ca is not None or shared is None else shared.ca
        if ca is None:
            context = ssl.create_default_context()  # the system's CAs
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            _load_ca(context, ca, f"backend {backend.name}: ca")
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(ALPN)
    own = backend.client_cert is not None
    cert = backend.client_cert if own or shared is None else shared.client_cert
    key = backend.client_key if own or shared is None else shared.client_key
    if cert is not None and key is not None:
        where = f"backend {backend.name}: "
        _load_cert_chain(context, cert, key, f"{where}client_cert", f"{where}client_key")
    return context


def check_shared_backend_tls(shared: BackendTlsConfig) -> None:
    """Raise TlsError if the files of ``backend_tls`` cannot be used (checked also when no
    https backend is configured yet: discovery may find some)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if shared.ca is not None:
        _load_ca(context, shared.ca, "backend_tls.ca")
    if shared.client_cert is not None and shared.client_key is not None:
        _load_cert_chain(
            context,
            shared.client_cert,
            shared.client_key,
            "backend_tls.client_cert",
            "backend_tls.client_key",
        )


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
