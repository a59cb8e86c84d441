"""Fault tests on real multi-process Redis topologies (Sentinel and Cluster)."""
