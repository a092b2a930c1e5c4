"""Git URLs from users: where they may point, and their credentials kept out of argv and the database.

A build's or webhook's repository is refused when its host resolves to a loopback, link-local, private
or otherwise non-public address (the rack's own ports, a cloud's metadata service), unless
RACK_GIT_ALLOW_PRIVATE is on. Credentials in the URL (`https://user:token@host/…`) are split off: the
URL stored and shown has none, the credentials are sealed (encrypted with a key derived from the rack
password) until a worker hands them to git through an askpass program.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SEALED = "sealed:"


def split_credentials(url: str) -> tuple[str, str, str]:
    """Return the URL without `user:password@`, the user and the password ("" when absent)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, "", ""
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password)


def with_credentials(url: str, user: str, password: str) -> str:
    """Return `url` with `user:password@` put back (the inverse of split_credentials)."""
    if not user and not password:
        return url
    parts = urlsplit(url)
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def private_address(url: str) -> tuple[str, str | None]:
    """Resolve an http(s) URL's host; return the first address, and the reason it is refused (or None).

    Raises ValueError when the host does not resolve.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"host {host!r} does not resolve ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        kind = _kind(ip)
        if kind:
            return address, f"{host} resolves to {kind} address {address}"
    return addresses[0], None


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for kind, test in (
        ("a loopback", ip.is_loopback),
        ("an unspecified", ip.is_unspecified),
        ("a link-local", ip.is_link_local),
        ("a private", ip.is_private),
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved or not ip.is_global),
    ):
        if test:
            return kind
    return ""


def _fernet(key_material: str):
    from cryptography.fernet import Fernet

    digest = hashlib.sha256(b"rack git credentials\0" + key_material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(key_material: str, user: str, password: str) -> str:
    """Encrypt git credentials for storing beside a build or webhook."""
    token = _fernet(key_material).encrypt(f"{user}\0{password}".encode()).decode()
    return SEALED + token


def unseal(key_material: str, sealed: str) -> tuple[str, str]:
    """Decrypt what seal() made; raise ValueError if the key changed or the text is not sealed."""
    from cryptography.fernet import InvalidToken

    if not sealed.startswith(SEALED):
        raise ValueError("not sealed credentials")
    try:
        plain = _fernet(key_material).decrypt(sealed.removeprefix(SEALED).encode()).decode()
    except InvalidToken:
        raise ValueError("the credentials were sealed with another rack password") from None
    user, _, password = plain.partition("\0")
    return user, password
