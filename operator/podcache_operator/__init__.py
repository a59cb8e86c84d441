"""podcache's Kubernetes operator: CacheConfig → config, Service, ServiceMonitor, sidecar injection."""
