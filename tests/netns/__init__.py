"""The network-namespace censorship lab: probe, censor router, internet and control hosts."""
