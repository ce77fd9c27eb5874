"""What the tunnel experiments (openvpn, wireguard, tor, ikev2) share: endpoint URLs, the
packet log and UDP/TCP exchanges that become VpnHandshake records, and the protocols' wire
formats (OpenVPN control packets, the WireGuard Noise IK handshake, Tor cells, IKEv2).
"""
