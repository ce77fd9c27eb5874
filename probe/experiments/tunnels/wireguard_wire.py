"""The WireGuard handshake (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, as in the WireGuard paper,
section 5.4): the initiator's first message, built with scapy's WireGuard layer, and the check
of the responder's answer (its MACs, our index, and the empty AEAD payload that proves the
responder knows its static private key and accepted ours).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from probe.experiments.tunnels.wire import WireError as WireError  # re-exported: the parsers raise it

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
MSG_INITIATION, MSG_RESPONSE, MSG_COOKIE_REPLY, MSG_TRANSPORT = 1, 2, 3, 4
TAI64_BASE = 0x400000000000000A


def _hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = _hmac(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


def _aead(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\0" * 4 + struct.pack("<Q", counter), plaintext, ad)


def _aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(b"\0" * 4 + struct.pack("<Q", counter), ciphertext, ad)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_from_private(raw: bytes) -> bytes:
    return _public(X25519PrivateKey.from_private_bytes(raw))


def tai64n(now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    return struct.pack(">QI", TAI64_BASE + int(now), int((now % 1) * 1e9))


@dataclass
class Initiation:
    """Our first message and the state needed to check the answer."""

    message: bytes
    sender_index: int
    chaining_key: bytes
    hash: bytes
    ephemeral: X25519PrivateKey


def build_initiation(client_private: bytes, server_public: bytes, *, sender_index: int | None = None,
                     now: float | None = None) -> Initiation:
    static = X25519PrivateKey.from_private_bytes(client_private)
    ephemeral = X25519PrivateKey.generate()
    e_pub = _public(ephemeral)
    ck = _hash(CONSTRUCTION)
    h = _hash(_hash(ck, IDENTIFIER), server_public)
    ck = _kdf(ck, e_pub, 1)[0]
    h = _hash(h, e_pub)
    ck, k = _kdf(ck, _dh(ephemeral, server_public), 2)
    encrypted_static = _aead(k, 0, _public(static), h)
    h = _hash(h, encrypted_static)
    ck, k = _kdf(ck, _dh(static, server_public), 2)
    encrypted_timestamp = _aead(k, 0, tai64n(now), h)
    h = _hash(h, encrypted_timestamp)
    from scapy.contrib.wireguard import Wireguard, WireguardInitiation  # slow import: only when used

    index = int.from_bytes(os.urandom(4), "little") if sender_index is None else sender_index
    pkt = Wireguard(message_type=MSG_INITIATION) / WireguardInitiation(
        sender_index=index, unencrypted_ephemeral=e_pub, encrypted_static=encrypted_static,
        encrypted_timestamp=encrypted_timestamp, mac1=b"\0" * 16, mac2=b"\0" * 16,
    )
    raw = bytes(pkt)
    mac1 = _mac(_hash(LABEL_MAC1, server_public), raw[:116])
    message = raw[:116] + mac1 + b"\0" * 16
    return Initiation(message, index, ck, h, ephemeral)


def check_reply(data: bytes, init: Initiation, client_private: bytes, psk: bytes | None = None) -> str:
    """What the reply is ("handshake response ..." or "cookie reply ..."); WireError otherwise."""
    from scapy.contrib.wireguard import Wireguard, WireguardCookieReply, WireguardResponse

    if len(data) < 4:
        raise WireError(f"truncated reply ({len(data)} bytes)")
    kind = data[0]
    if data[1:4] != b"\0\0\0":
        raise WireError("not a WireGuard message (reserved bytes set)")
    if kind == MSG_COOKIE_REPLY:
        if len(data) != COOKIE_REPLY_SIZE:
            raise WireError(f"cookie reply of {len(data)} bytes, expected {COOKIE_REPLY_SIZE}")
        reply = Wireguard(data)[WireguardCookieReply]
        if reply.receiver_index != init.sender_index:
            raise WireError("cookie reply for another handshake")
        return "cookie reply (the server is under load, but answered)"
    if kind != MSG_RESPONSE:
        raise WireError(f"unexpected message type {kind}")
    if len(data) != RESPONSE_SIZE:
        raise WireError(f"handshake response of {len(data)} bytes, expected {RESPONSE_SIZE}")
    resp = Wireguard(data)[WireguardResponse]
    if resp.receiver_index != init.sender_index:
        raise WireError("handshake response for another initiation")
    client_public = public_from_private(client_private)
    if not hmac.compare_digest(_mac(_hash(LABEL_MAC1, client_public), data[:60]), bytes(resp.mac1)):
        raise WireError("mac1 of the response does not verify")
    e_r = bytes(resp.unencrypted_ephemeral)
    static = X25519PrivateKey.from_private_bytes(client_private)
    ck = _kdf(init.chaining_key, e_r, 1)[0]
    h = _hash(init.hash, e_r)
    ck = _kdf(ck, _dh(init.ephemeral, e_r), 1)[0]
    ck = _kdf(ck, _dh(static, e_r), 1)[0]
    ck, tau, k = _kdf(ck, psk or b"\0" * 32, 3)
    h = _hash(h, tau)
    try:
        _aead_open(k, 0, bytes(resp.encrypted_nothing), h)
    except InvalidTag:
        raise WireError("the response does not decrypt (wrong server key or preshared key)") from None
    return f"handshake response sender_index={resp.sender_index:#010x}"
