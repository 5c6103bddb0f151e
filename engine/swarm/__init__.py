"""The swarm: Lattica transport, wire protocol, node identity, membership, request pipeline."""
