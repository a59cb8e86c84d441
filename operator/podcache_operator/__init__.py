"""podcache's Kubernetes operator.

CacheConfig → sidecar config (ConfigMap), Service, ServiceMonitor; sidecar injection by webhook.
"""
