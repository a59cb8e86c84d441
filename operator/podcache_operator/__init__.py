"""podcache's Kubernetes operator.

CacheConfig → sidecar config (ConfigMap), Service, ServiceMonitor; sidecar injection by webhook.

Modules, one concern each (importing this package registers no kopf handlers;
``main`` does, by importing ``handlers`` and ``webhook``):

* ``settings`` — the operator's settings, read from ``PODCACHE_*`` variables;
* ``rendering`` — CacheConfig spec → sidecar config, ConfigMap, Service, ServiceMonitor (pure);
* ``injection`` — pod + CacheConfig → the JSONPatch adding the sidecar (pure);
* ``validation`` — checks of a spec beyond the CRD schema;
* ``conditions`` — ``status.conditions`` in the metav1.Condition shape;
* ``kubeapi`` — every API call the operator makes, and ``API_CALLS`` (its RBAC);
* ``reconciling`` — one CacheConfig's owned objects and status;
* ``handlers`` — the kopf handlers and indices;
* ``webhook`` — the mutating admission webhook (kopf's ``on.mutate`` behind a strict server);
* ``main`` — ``podcache-operator``: the CLI and the startup configure handler.
"""
