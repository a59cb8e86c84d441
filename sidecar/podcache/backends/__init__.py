"""Storage backends: process memory and Redis (standalone, Sentinel, Cluster)."""
