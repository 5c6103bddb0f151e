"""Which volunteer serves which layers (phase 1) and which chain answers each request (phase 2).

Pure Python (numpy at most): the same code runs in the live node and in the swarm simulator.
"""
