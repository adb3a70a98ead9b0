{{/* ---- names ------------------------------------------------------------------ */}}
{{- define "kloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kloop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: kloop.component (dict "root" $ "name" "registry") */}}
{{- define "kloop.component" -}}
{{- printf "%s-%s" (include "kloop.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ---- labels ----------------------------------------------------------------- */}}
{{- define "kloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kloop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "kloop.labels" -}}
{{ include "kloop.selectorLabels" . }}
app.kubernetes.io/part-of: kloop
app.kubernetes.io/version: {{ .version | default .root.Chart.AppVersion | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that every pod of this release carries (NetworkPolicy peers). */}}
{{- define "kloop.releaseSelector" -}}
app.kubernetes.io/name: {{ include "kloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* ---- images ------------------------------------------------------------------ */}}
{{/* kloop.image (dict "root" $ "image" .image): [<registry>/]<repository>:<tag> */}}
{{- define "kloop.image" -}}
{{- $registry := .image.registry | default .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" .image.repository .image.digest -}}{{- end -}}
{{- if $registry -}}{{- printf "%s/%s" $registry $ref -}}{{- else -}}{{- $ref -}}{{- end -}}
{{- end -}}

{{/* Third-party images (redis, mlflow, qdrant, otel): their own registry, never the
     kloop one. */}}
{{- define "kloop.thirdPartyImage" -}}
{{- $ref := printf "%s:%s" .repository (toString .tag) -}}
{{- if .digest -}}{{- $ref = printf "%s@%s" .repository .digest -}}{{- end -}}
{{- if .registry -}}{{- printf "%s/%s" .registry $ref -}}{{- else -}}{{- $ref -}}{{- end -}}
{{- end -}}

{{/* Use as: {{- with (include "kloop.imagePullSecrets" $) }}{{ . | nindent 6 }}{{ end }} */}}
{{- define "kloop.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ---- endpoints of the infrastructure ------------------------------------------ */}}
{{- define "kloop.redis.host" -}}
{{- include "kloop.component" (dict "root" . "name" "redis") -}}
{{- end -}}

{{- define "kloop.redis.secretName" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-auth" (include "kloop.redis.host" .)) -}}
{{- end -}}

{{/* Env vars that yield the Redis URL of one service (a list of EnvVar). The password
     comes from a Secret and is spliced into the URL by Kubernetes' $(VAR) expansion. */}}
{{- define "kloop.redis.env" -}}
{{- $root := .root -}}
{{- $var := printf "KLOOP_%s_REDIS_URL" .prefix -}}
{{- if $root.Values.redis.enabled }}
{{- if $root.Values.redis.auth.enabled }}
- name: KLOOP_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kloop.redis.secretName" $root }}
      key: {{ $root.Values.redis.auth.existingSecretKey }}
- name: {{ $var }}
  value: {{ printf "redis://:$(KLOOP_REDIS_PASSWORD)@%s:%d/%d" (include "kloop.redis.host" $root) (int $root.Values.redis.port) (int $root.Values.redis.database) | quote }}
{{- else }}
- name: {{ $var }}
  value: {{ printf "redis://%s:%d/%d" (include "kloop.redis.host" $root) (int $root.Values.redis.port) (int $root.Values.redis.database) | quote }}
{{- end }}
{{- else if $root.Values.redis.external.existingSecret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.external.existingSecret }}
      key: {{ $root.Values.redis.external.existingSecretKey }}
{{- else }}
- name: {{ $var }}
  value: {{ required "redis.external.url (or redis.external.existingSecret) is required when redis.enabled is false" $root.Values.redis.external.url | quote }}
{{- end }}
{{- end -}}

{{- define "kloop.mlflow.uri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s:%d" (include "kloop.component" (dict "root" . "name" "mlflow")) (int .Values.mlflow.port) -}}
{{- else -}}
{{- required "mlflow.external.trackingUri is required when mlflow.enabled is false" .Values.mlflow.external.trackingUri -}}
{{- end -}}
{{- end -}}

{{- define "kloop.qdrant.url" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s:%d" (include "kloop.component" (dict "root" . "name" "qdrant")) (int .Values.qdrant.ports.http) -}}
{{- else -}}
{{- .Values.qdrant.external.url -}}
{{- end -}}
{{- end -}}

{{- define "kloop.otlp.endpoint" -}}
{{- if .Values.otelCollector.enabled -}}
{{- printf "http://%s:%d" (include "kloop.component" (dict "root" . "name" "otel-collector")) (int .Values.otelCollector.ports.otlpGrpc) -}}
{{- else -}}
{{- .Values.otel.endpoint -}}
{{- end -}}
{{- end -}}

{{/* gRPC address of another kloop service, e.g. "kloop-registry:50151". */}}
{{- define "kloop.service.addr" -}}
{{- $svc := index .root.Values.services .name -}}
{{- printf "%s:%d" (include "kloop.component" (dict "root" .root "name" .name)) (int $svc.ports.grpc) -}}
{{- end -}}

{{/* ---- security ------------------------------------------------------------------ */}}
{{- define "kloop.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "kloop.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* NetworkPolicy of an in-chart infrastructure workload: only this release's pods
     reach its ports (plus metricsFrom on an optional metrics port).
     kloop.infraNetworkPolicy (dict "ctx" $ctx "ports" (list "redis") "metricsPort" "") */}}
{{- define "kloop.infraNetworkPolicy" -}}
{{- $root := .ctx.root -}}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "kloop.component" .ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" .ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "kloop.selectorLabels" .ctx | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports:
        {{- range .ports }}
        - port: {{ . }}
          protocol: TCP
        {{- end }}
      from:
        - podSelector:
            matchLabels:
              {{- include "kloop.releaseSelector" $root | nindent 14 }}
    {{- if .metricsPort }}
    {{- with $root.Values.networkPolicy.metricsFrom }}
    - ports:
        - port: {{ $.metricsPort }}
          protocol: TCP
      from:
        {{- toYaml . | nindent 8 }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* HTTP base URL of another kloop service, e.g. "http://kloop-drift-monitor:18156". */}}
{{- define "kloop.service.url" -}}
{{- $svc := index .root.Values.services .name -}}
{{- printf "http://%s:%d" (include "kloop.component" (dict "root" .root "name" .name)) (int $svc.ports.http) -}}
{{- end -}}

{{/* KEDA ScaledObject (+ TriggerAuthentication when Redis needs a password) of a Celery
     worker: one `redis` trigger per queue, on the length of the queue's Redis list
     (kombu's Redis transport keeps each queue as a list named after it).
     kloop.kedaScaledObject (dict "root" $ "ctx" $ctx "fullname" $fullname "svc" $svc) */}}
{{- define "kloop.kedaScaledObject" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $keda := $svc.keda -}}
{{- $address := "" -}}
{{- $secret := "" -}}
{{- $secretKey := "" -}}
{{- if $root.Values.redis.enabled -}}
{{- $address = printf "%s:%d" (include "kloop.redis.host" $root) (int $root.Values.redis.port) -}}
{{- if $root.Values.redis.auth.enabled -}}
{{- $secret = include "kloop.redis.secretName" $root -}}
{{- $secretKey = $root.Values.redis.auth.existingSecretKey -}}
{{- end -}}
{{- else -}}
{{- $address = required "services.worker.keda.redisAddress (host:port) is required when redis.enabled is false" $keda.redisAddress -}}
{{- $secret = $keda.passwordSecret -}}
{{- $secretKey = $keda.passwordSecretKey -}}
{{- end -}}
{{- if not $svc.queues }}
{{- fail "services.worker.keda: queues must list the Celery queues to scale on" }}
{{- end }}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) }}
{{- fail "services.worker.keda: minReplicaCount must not exceed maxReplicaCount" }}
{{- end }}
{{- if $secret }}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata:
  name: {{ .fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" .ctx | nindent 4 }}
spec:
  secretTargetRef:
    - parameter: password
      name: {{ $secret }}
      key: {{ $secretKey }}
{{- end }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ .fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" .ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .fullname }}
  minReplicaCount: {{ $keda.minReplicaCount }}
  maxReplicaCount: {{ $keda.maxReplicaCount }}
  pollingInterval: {{ $keda.pollingInterval }}
  cooldownPeriod: {{ $keda.cooldownPeriod }}
  triggers:
    {{- range $queue := $svc.queues }}
    - type: redis
      metadata:
        address: {{ $address | quote }}
        databaseIndex: {{ $root.Values.redis.database | toString | quote }}
        listName: {{ $queue | quote }}
        listLength: {{ $keda.listLength | toString | quote }}
        activationListLength: {{ $keda.activationListLength | toString | quote }}
      {{- if $secret }}
      authenticationRef:
        name: {{ $.fullname }}
      {{- end }}
    {{- end }}
{{- end -}}
