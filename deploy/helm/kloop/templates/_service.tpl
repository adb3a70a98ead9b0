{{/*
The one template every kloop service is rendered from:
  {{ include "kloop.service" (dict "root" $ "name" "registry" "svc" $.Values.services.registry) }}
It yields the ServiceAccount, Service, Deployment and, when enabled, the HPA, the PDB
and the NetworkPolicy of that service.
*/}}
{{- define "kloop.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- $fullname := include "kloop.component" $ctx -}}
{{- $prefix := $name | upper | replace "-" "_" -}}
{{- $cachePath := printf "/var/cache/kloop/%s" $name -}}
{{- if and (eq $name "training") (eq ($svc.executor | default "local") "local") (or (gt (int $svc.replicas) 1) $svc.autoscaling.enabled) }}
{{- fail "services.training: the local executor runs with exactly one replica (use executor: kubernetes to scale out)" }}
{{- end }}
{{- if $svc.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
  {{- with $svc.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "kloop.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $svc.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: http
      port: {{ $svc.ports.http }}
      targetPort: http
      protocol: TCP
      appProtocol: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $svc.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "kloop.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kloop.labels" $ctx | nindent 8 }}
      annotations:
        kubectl.kubernetes.io/default-container: {{ $name }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ if $svc.serviceAccount.create }}{{ $fullname }}{{ else }}default{{ end }}
      # The training service talks to the API server (Job executor); nobody else does.
      automountServiceAccountToken: {{ and (eq $name "training") (eq ($svc.executor | default "local") "kubernetes") }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      {{- with (include "kloop.imagePullSecrets" $root) }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- include "kloop.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "kloop.image" (dict "root" $root "image" $svc.image) | quote }}
          imagePullPolicy: {{ $svc.image.pullPolicy | default $root.Values.image.pullPolicy }}
          securityContext:
            {{- include "kloop.containerSecurityContext" $root | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ $svc.ports.grpc }}
              protocol: TCP
            - name: http
              containerPort: {{ $svc.ports.http }}
              protocol: TCP
          env:
            - name: KLOOP_{{ $prefix }}_GRPC_HOST
              value: "0.0.0.0"
            - name: KLOOP_{{ $prefix }}_HTTP_HOST
              value: "0.0.0.0"
            - name: KLOOP_{{ $prefix }}_GRPC_PORT
              value: {{ $svc.ports.grpc | quote }}
            - name: KLOOP_{{ $prefix }}_HTTP_PORT
              value: {{ $svc.ports.http | quote }}
            - name: KLOOP_{{ $prefix }}_LOG_LEVEL
              value: {{ $root.Values.logLevel | quote }}
            - name: KLOOP_{{ $prefix }}_LOG_FORMAT
              value: {{ $root.Values.logFormat | quote }}
            - name: KLOOP_{{ $prefix }}_SHUTDOWN_GRACE_SECONDS
              value: {{ sub (int $svc.terminationGracePeriodSeconds) 5 | quote }}
            {{- if has "redis" $svc.connects }}
            {{- include "kloop.redis.env" (dict "root" $root "prefix" $prefix) | trim | nindent 12 }}
            {{- end }}
            {{- if has "mlflow" $svc.connects }}
            - name: KLOOP_{{ $prefix }}_MLFLOW_TRACKING_URI
              value: {{ include "kloop.mlflow.uri" $root | quote }}
            {{- end }}
            {{- range $dep := list "registry" "inference" "training" "gateway" }}
            {{- if has $dep $svc.connects }}
            - name: KLOOP_{{ $prefix }}_{{ upper $dep }}_ADDR
              value: {{ include "kloop.service.addr" (dict "root" $root "name" $dep) | quote }}
            {{- end }}
            {{- end }}
            {{- if $svc.cacheDir.env }}
            - name: KLOOP_{{ $prefix }}_{{ $svc.cacheDir.env }}
              value: {{ $cachePath | quote }}
            {{- end }}
            {{- with (include "kloop.otlp.endpoint" $root) }}
            - name: KLOOP_{{ $prefix }}_OTLP_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            - name: OTEL_SERVICE_NAME
              value: {{ printf "kloop-%s" $name | quote }}
            - name: K8S_POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: K8S_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: "k8s.namespace.name=$(K8S_NAMESPACE),k8s.pod.name=$(K8S_POD_NAME),service.namespace=kloop"
            {{- if and (eq $name "training") (eq ($svc.executor | default "local") "kubernetes") }}
            - name: KLOOP_TRAINING_EXECUTOR
              value: kubernetes
            - name: KLOOP_TRAINING_K8S_NAMESPACE
              value: "$(K8S_NAMESPACE)"
            - name: KLOOP_TRAINING_K8S_POD_NAME
              value: "$(K8S_POD_NAME)"
            - name: KLOOP_TRAINING_K8S_IMAGE
              value: {{ include "kloop.image" (dict "root" $root "image" $svc.image) | quote }}
            - name: KLOOP_TRAINING_K8S_SERVICE_ACCOUNT
              value: {{ printf "%s-job" $fullname | quote }}
            - name: KLOOP_TRAINING_K8S_TTL_SECONDS_AFTER_FINISHED
              value: {{ $svc.jobs.ttlSecondsAfterFinished | quote }}
            - name: KLOOP_TRAINING_K8S_BACKOFF_LIMIT
              value: {{ $svc.jobs.backoffLimit | quote }}
            - name: KLOOP_TRAINING_K8S_ACTIVE_DEADLINE_SECONDS
              value: {{ $svc.jobs.activeDeadlineSeconds | quote }}
            - name: KLOOP_TRAINING_K8S_RESOURCES
              value: {{ toJson $svc.jobs.resources | quote }}
            {{- end }}
            {{- range $key, $value := $svc.env }}
            - name: KLOOP_{{ $prefix }}_{{ $key }}
              value: {{ tpl (toString $value) $root | quote }}
            {{- end }}
            {{- with $svc.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          # Started: the process answers /livez (imports and settings done).
          startupProbe:
            httpGet:
              path: /livez
              port: http
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            httpGet:
              path: /livez
              port: http
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          # Ready: the standard gRPC health service says SERVING (dependencies reachable,
          # models warm), probed natively by the kubelet.
          readinessProbe:
            grpc:
              port: {{ $svc.ports.grpc }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $svc.cacheDir.env }}
            - name: cache
              mountPath: {{ $cachePath }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- if $svc.cacheDir.env }}
        - name: cache
          emptyDir:
            sizeLimit: {{ $svc.cacheDir.sizeLimit | default "1Gi" }}
        {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $svc.affinity }}
      affinity:
        {{- toYaml $svc.affinity | nindent 8 }}
      {{- else }}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "kloop.selectorLabels" $ctx | nindent 20 }}
      {{- end }}
{{- if $svc.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $fullname }}
  minReplicas: {{ $svc.autoscaling.minReplicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- if $svc.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  minAvailable: {{ $svc.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "kloop.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "kloop.selectorLabels" $ctx | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    # The API ports: the other pods of this release{{ if $svc.public }}, and the outside{{ end }}.
    - ports:
        - port: grpc
          protocol: TCP
        - port: http
          protocol: TCP
      {{- if $svc.public }}
      {{- with $root.Values.networkPolicy.publicFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- else }}
      from:
        - podSelector:
            matchLabels:
              {{- include "kloop.releaseSelector" $root | nindent 14 }}
      {{- end }}
    {{- with $root.Values.networkPolicy.metricsFrom }}
    # Prometheus scrapes /metrics on the http port.
    - ports:
        - port: http
          protocol: TCP
      from:
        {{- toYaml . | nindent 8 }}
    {{- end }}
{{- end }}
{{- end -}}
