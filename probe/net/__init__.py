"""Network layer: I/O turned into schema observations (dns, tcp, tls, http), never raising
for network failures; errors.classify is the one map from exceptions to failure strings."""
