"""The links beneath a node: libp2p and in-memory hosts, the link layer, timers, peers and identities."""
