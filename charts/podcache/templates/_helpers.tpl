{{/*
podcache.name: the chart name, or nameOverride; truncated to 63 characters because
some Kubernetes name fields are limited to the DNS label length.
*/}}
{{- define "podcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.fullname: the prefix of every object name ("<release>-podcache", or just the
release name when it already contains the chart name), truncated to 63 characters.
*/}}
{{- define "podcache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
podcache.namespace: the namespace of every namespaced object.
*/}}
{{- define "podcache.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.chart: "<name>-<version>" for the helm.sh/chart label ('+' is not allowed in
label values).
*/}}
{{- define "podcache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.selectorLabels: the labels that select the operator pods. They never change
between upgrades (a Deployment's selector is immutable), so no version in here.
*/}}
{{- define "podcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
podcache.labels: the recommended Kubernetes labels plus commonLabels, on every object.
*/}}
{{- define "podcache.labels" -}}
app.kubernetes.io/name: {{ include "podcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podcache
helm.sh/chart: {{ include "podcache.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
podcache.image: the image reference of a component, its image block ({registry,
repository, tag, digest}) over the top-level .Values.image; called as
(include "podcache.image" (list .Values.operator.image .)). A repository set in the block
brings its own registry (empty: none, the repository is the whole name); a registry alone
moves image.repository to it. A tag or digest set in the block replaces image's pair. The
tag defaults to the chart's appVersion; a digest pins the image and wins over the tag.
*/}}
{{- define "podcache.image" -}}
{{- $own := index . 0 }}
{{- $root := index . 1 }}
{{- $global := $root.Values.image }}
{{- $registry := $global.registry }}
{{- $repository := $global.repository }}
{{- if $own.repository }}
{{- $registry = $own.registry }}
{{- $repository = $own.repository }}
{{- else if $own.registry }}
{{- $registry = $own.registry }}
{{- end }}
{{- $tag := $global.tag }}
{{- $digest := $global.digest }}
{{- if or $own.tag $own.digest }}
{{- $tag = $own.tag }}
{{- $digest = $own.digest }}
{{- end }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository (default $root.Chart.AppVersion $tag | toString) }}
{{- end }}
{{- end }}

{{/*
podcache.imagePullPolicy: a component's pull policy, else the top-level image's; called
as (include "podcache.imagePullPolicy" (list .Values.sidecar.image .)).
*/}}
{{- define "podcache.imagePullPolicy" -}}
{{- $own := index . 0 }}
{{- $root := index . 1 }}
{{- default $root.Values.image.pullPolicy $own.pullPolicy }}
{{- end }}

{{/*
podcache.serviceAccountName: the operator's ServiceAccount (created or existing).
*/}}
{{- define "podcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
podcache.webhookServiceName: the Service the API server calls for admission.
*/}}
{{- define "podcache.webhookServiceName" -}}
{{- printf "%s-webhook" (include "podcache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.webhookSecretName: the Secret holding the webhook's TLS key pair (and CA).
*/}}
{{- define "podcache.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "podcache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.webhookDNSNames: the names the webhook certificate must be valid for (the
API server uses <service>.<namespace>.svc).
*/}}
{{- define "podcache.webhookDNSNames" -}}
{{- $service := include "podcache.webhookServiceName" . }}
{{- $namespace := include "podcache.namespace" . -}}
- {{ $service }}
- {{ printf "%s.%s" $service $namespace }}
- {{ printf "%s.%s.svc" $service $namespace }}
- {{ printf "%s.%s.svc.cluster.local" $service $namespace }}
{{- end }}

{{/*
podcache.certManagerIssuerName: the Issuer the chart creates when certManager.issuerRef
is empty.
*/}}
{{- define "podcache.certManagerIssuerName" -}}
{{- printf "%s-selfsigned" (include "podcache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.certManagerCAName: the CA Certificate, its Secret and the CA Issuer the chart
creates when certManager.issuerRef is empty.
*/}}
{{- define "podcache.certManagerCAName" -}}
{{- printf "%s-webhook-ca" (include "podcache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
podcache.validateValues: fails the render with a clear message for value combinations
that cannot work; included once from the Deployment template.
*/}}
{{- define "podcache.validateValues" -}}
{{- $webhook := .Values.webhook }}
{{- if and $webhook.selfSigned.enabled $webhook.certManager.enabled }}
{{- fail "webhook.selfSigned.enabled and webhook.certManager.enabled are both true: choose one source for the webhook's TLS certificate" }}
{{- end }}
{{- if not (or $webhook.selfSigned.enabled $webhook.certManager.enabled) }}
{{- fail "the admission webhook needs TLS: set webhook.selfSigned.enabled=true (Helm generates a CA) or webhook.certManager.enabled=true (cert-manager issues it)" }}
{{- end }}
{{- if lt (int .Values.operator.replicaCount) 1 }}
{{- fail (printf "operator.replicaCount must be at least 1 (got %v): without an operator no sidecar is injected" .Values.operator.replicaCount) }}
{{- end }}
{{- $pdb := .Values.operator.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "operator.podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "operator.podDisruptionBudget is enabled but neither minAvailable nor maxUnavailable is set" }}
{{- end }}
{{- if eq (int .Values.webhook.port) (int .Values.operator.healthPort) }}
{{- fail "webhook.port and operator.healthPort must differ: both listen in the operator container" }}
{{- end }}
{{- if or (eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort)) (eq (int .Values.operator.metricsPort) (int .Values.webhook.port)) }}
{{- fail "operator.metricsPort must differ from operator.healthPort and webhook.port: they all listen in the operator container" }}
{{- end }}
{{- end }}

{{/*
podcache.webhookPath: the URL path the operator serves the sidecar injector on (the id
of its kopf admission handler).
*/}}
{{- define "podcache.webhookPath" -}}
/inject
{{- end }}

{{/*
podcache.webhookCertDir: where the webhook's TLS Secret is mounted in the operator.
*/}}
{{- define "podcache.webhookCertDir" -}}
/etc/podcache/webhook-tls
{{- end }}

{{/*
podcache.operatorEnv: the operator's settings as environment variables, with the names
podcache_operator.settings reads (Settings.from_env): identity, peering, health, metrics,
webhook TLS, and the sidecar defaults the webhook injects.
*/}}
{{- define "podcache.operatorEnv" -}}
{{- $certDir := include "podcache.webhookCertDir" . -}}
# kopf's peer identity: the pod name, so `kubectl get clusterkopfpeering -o yaml` is readable.
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PODCACHE_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: PODCACHE_PEERING_NAME
  value: {{ .Values.operator.peering.name | quote }}
# One replica runs standalone when kopf's peering CRD is missing; more wait for it.
- name: PODCACHE_REPLICAS
  value: {{ .Values.operator.replicaCount | quote }}
- name: PODCACHE_LIVENESS_ENDPOINT
  value: {{ printf "http://0.0.0.0:%d/healthz" (int .Values.operator.healthPort) | quote }}
# The operator's own /metrics (the container port "metrics", the metrics Service).
- name: PODCACHE_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: PODCACHE_WEBHOOK_PORT
  value: {{ .Values.webhook.port | quote }}
# The chart owns the MutatingWebhookConfiguration (objectSelector, failurePolicy,
# cert-manager injection): an empty value stops kopf from managing one itself.
- name: PODCACHE_WEBHOOK_MANAGED
  value: ""
- name: PODCACHE_WEBHOOK_CERT_FILE
  value: {{ printf "%s/tls.crt" $certDir | quote }}
- name: PODCACHE_WEBHOOK_KEY_FILE
  value: {{ printf "%s/tls.key" $certDir | quote }}
- name: PODCACHE_WEBHOOK_CA_FILE
  value: {{ printf "%s/ca.crt" $certDir | quote }}
- name: PODCACHE_REJECT_MISSING_CONFIG
  value: {{ .Values.webhook.rejectMissingConfig | quote }}
# What to do when the sidecar cannot be injected: as the apiserver does when we fail.
- name: PODCACHE_WEBHOOK_FAILURE_POLICY
  value: {{ .Values.webhook.failurePolicy | quote }}
# Without it the operator reads no Secret (and the ClusterRole grants none).
- name: PODCACHE_CHECK_SECRETS
  value: {{ .Values.operator.checkSecrets | quote }}
- name: PODCACHE_RESTART_PODS_WITHOUT_SIDECAR
  value: {{ .Values.operator.restartPodsWithoutSidecar | quote }}
- name: PODCACHE_SIDECAR_IMAGE
  value: {{ include "podcache.image" (list .Values.sidecar.image .) | quote }}
- name: PODCACHE_SIDECAR_IMAGE_PULL_POLICY
  value: {{ include "podcache.imagePullPolicy" (list .Values.sidecar.image .) | quote }}
# Added to every injected pod's spec.imagePullSecrets (they must exist in its namespace).
- name: PODCACHE_SIDECAR_IMAGE_PULL_SECRETS
  value: {{ include "podcache.sidecarImagePullSecrets" . | quote }}
- name: PODCACHE_SIDECAR_NATIVE
  value: {{ include "podcache.sidecarNative" . | quote }}
- name: PODCACHE_SIDECAR_METRICS_PORT
  value: {{ .Values.sidecar.metricsPort | quote }}
- name: PODCACHE_SIDECAR_CPU_REQUEST
  value: {{ .Values.sidecar.resources.requests.cpu | quote }}
- name: PODCACHE_SIDECAR_MEMORY_REQUEST
  value: {{ .Values.sidecar.resources.requests.memory | quote }}
- name: PODCACHE_SIDECAR_MEMORY_LIMIT
  value: {{ .Values.sidecar.resources.limits.memory | quote }}
- name: PODCACHE_SIDECAR_RUN_AS_USER
  value: {{ .Values.sidecar.runAsUser | quote }}
{{- end }}

{{/*
podcache.sidecarImagePullSecrets: the names in sidecar.imagePullSecrets, comma-separated
(the operator's PODCACHE_SIDECAR_IMAGE_PULL_SECRETS); empty when there are none.
*/}}
{{- define "podcache.sidecarImagePullSecrets" -}}
{{- $names := list }}
{{- range .Values.sidecar.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/*
podcache.sidecarNative: "true" or "false", whether the injected sidecar is a native one;
sidecar.native=auto decides by the cluster version (SidecarContainers is on by default
from Kubernetes 1.29).
*/}}
{{- define "podcache.sidecarNative" -}}
{{- if eq (toString .Values.sidecar.native) "auto" }}
{{- semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- else }}
{{- .Values.sidecar.native }}
{{- end }}
{{- end }}
