"""IKEv2's first exchange (RFC 7296 section 1.2): an IKE_SA_INIT request built with scapy's IKEv2
layer (SA with common proposals, KE, Nonce) and the check of the responder's IKE_SA_INIT.

A responder that answers with SA+KE+Nonce, or asks for another DH group (INVALID_KE_PAYLOAD)
or a cookie, is an IKEv2 server that answered; a malformed or unrelated reply is not.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probe.experiments.tunnels.wire import WireError as WireError  # re-exported: the parsers raise it

if TYPE_CHECKING:
    from scapy.packet import Packet

IKE_SA_INIT = 34
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20
NOTIFY_NO_PROPOSAL_CHOSEN = 14
NOTIFY_INVALID_KE_PAYLOAD = 17
NOTIFY_COOKIE = 16390
GROUP_CURVE25519, GROUP_MODP2048, GROUP_ECP256 = 31, 14, 19
# RFC 3526 group 14 prime: a valid public value is g^x mod p.
MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
SUPPORTED_GROUPS = (GROUP_CURVE25519, GROUP_MODP2048)


def key_exchange(group: int) -> bytes:
    if group == GROUP_CURVE25519:
        return X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if group == GROUP_MODP2048:
        return pow(2, secrets.randbits(256) | 1, MODP2048_P).to_bytes(256, "big")
    raise ValueError(f"unsupported DH group {group}")


@dataclass
class Request:
    message: bytes
    spi: bytes
    group: int
    ke: bytes
    nonce: bytes


def build_sa_init(group: int = GROUP_CURVE25519, *, spi: bytes | None = None, cookie: bytes | None = None,
                  ke: bytes | None = None, nonce: bytes | None = None) -> Request:
    """An IKE_SA_INIT request. Answering a COOKIE, pass the first request's SPI, KE and nonce:
    the responder computes the cookie over them (RFC 7296 section 2.6)."""
    from scapy.contrib.ikev2 import (  # slow import: only when used
        IKEv2,
        IKEv2_KE,
        IKEv2_Nonce,
        IKEv2_Notify,
        IKEv2_Proposal,
        IKEv2_SA,
        IKEv2_Transform,
    )

    spi = spi or os.urandom(8)
    ke = ke or key_exchange(group)
    nonce = nonce or os.urandom(32)
    # Common road-warrior proposals: AES-CBC 128/256 and AES-GCM with SHA-256/SHA-1, both groups.
    transforms = (
        IKEv2_Transform(transform_type="Encryption", transform_id="AES-CBC", length=12, key_length=128)
        / IKEv2_Transform(transform_type="Encryption", transform_id="AES-CBC", length=12, key_length=256)
        / IKEv2_Transform(transform_type="PRF", transform_id="PRF_HMAC_SHA2_256")
        / IKEv2_Transform(transform_type="PRF", transform_id="PRF_HMAC_SHA1")
        / IKEv2_Transform(transform_type="Integrity", transform_id="SHA2-256-128")
        / IKEv2_Transform(transform_type="Integrity", transform_id="HMAC-SHA1-96")
        / IKEv2_Transform(transform_type="GroupDesc", transform_id=GROUP_CURVE25519)
        / IKEv2_Transform(transform_type="GroupDesc", transform_id=GROUP_MODP2048)
    )
    proposal = IKEv2_Proposal(proposal=1, proto="IKE", trans_nb=8, trans=transforms)
    payloads: Packet = IKEv2_SA(prop=proposal) / IKEv2_KE(group=group, ke=ke) / IKEv2_Nonce(nonce=nonce)
    if cookie is not None:
        payloads = IKEv2_Notify(type=NOTIFY_COOKIE, notify=cookie) / payloads
    pkt = IKEv2(init_SPI=spi, resp_SPI=b"\0" * 8, exch_type=IKE_SA_INIT, flags="Initiator", id=0) / payloads
    return Request(bytes(pkt), spi, group, ke, nonce)


@dataclass
class Reply:
    summary: str
    ok: bool  # a full IKE_SA_INIT answer (SA, KE, Nonce)
    retry_group: int | None = None
    cookie: bytes | None = None


def check_reply(data: bytes, request: Request) -> Reply:
    """Parse the responder's IKE_SA_INIT; WireError when it is not one for our SPI."""
    from scapy.contrib.ikev2 import IKEv2, IKEv2_KE, IKEv2_Nonce, IKEv2_Notify, IKEv2_SA

    if len(data) < 28:
        raise WireError(f"truncated reply ({len(data)} bytes)")
    if data[:8] != request.spi:
        raise WireError("reply for another IKE SA (initiator SPI differs)")
    if data[17] >> 4 != 2:
        raise WireError(f"IKE version {data[17] >> 4}.{data[17] & 15}, expected 2")
    if data[18] != IKE_SA_INIT:
        raise WireError(f"exchange type {data[18]}, expected IKE_SA_INIT")
    if not data[19] & FLAG_RESPONSE:
        raise WireError("not a response")
    length = int.from_bytes(data[24:28], "big")
    if length != len(data):
        raise WireError(f"length field says {length} bytes, got {len(data)} (truncated or padded)")
    pkt = IKEv2(data)
    notify = pkt.getlayer(IKEv2_Notify)
    while notify is not None:
        kind = int(notify.type)
        if kind == NOTIFY_INVALID_KE_PAYLOAD and len(bytes(notify.notify)) >= 2:
            group = int.from_bytes(bytes(notify.notify)[:2], "big")
            return Reply(f"IKE_SA_INIT response: INVALID_KE_PAYLOAD, wants group {group}", False, retry_group=group)
        if kind == NOTIFY_COOKIE:
            return Reply("IKE_SA_INIT response: COOKIE", False, cookie=bytes(notify.notify))
        if kind == NOTIFY_NO_PROPOSAL_CHOSEN:
            # An IKEv2 responder answered, but our proposals do not suit it: it is reachable.
            return Reply("IKE_SA_INIT response: NO_PROPOSAL_CHOSEN", True)
        notify = notify.payload.getlayer(IKEv2_Notify)
    ke = pkt.getlayer(IKEv2_KE)
    if pkt.getlayer(IKEv2_SA) is None or ke is None or pkt.getlayer(IKEv2_Nonce) is None:
        raise WireError("IKE_SA_INIT response without SA, KE and Nonce")
    if data[8:16] == b"\0" * 8:
        raise WireError("IKE_SA_INIT response without a responder SPI")
    group = int(ke.group)
    return Reply(f"IKE_SA_INIT response: SA, KE (group {group}), Nonce", True)
