{{/*
The one template every kloop service is rendered from:
  {{ include "kloop.service" (dict "root" $ "name" "registry" "svc" $.Values.services.registry) }}
It yields the ServiceAccount, Service, Deployment and, when enabled, the HPA, the PDB
and the NetworkPolicy of that service.
Optional keys of a service (besides those in values.yaml): envPrefix (KLOOP_<prefix>_,
default the name), args (container args), probes (replace the HTTP/gRPC probes),
service: false (no Service), metricsOnly (the http port serves only /metrics),
dataDir, scratch (extra emptyDirs), keda (ScaledObject), anthropic (rag).
*/}}
{{- define "kloop.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- $fullname := include "kloop.component" $ctx -}}
{{- $prefix := $svc.envPrefix | default $name | upper | replace "-" "_" -}}
{{- $grpc := ($svc.ports.grpc | default 0 | int) -}}
{{- $http := ($svc.ports.http | default 0 | int) -}}
{{- $keda := $svc.keda | default dict -}}
{{- $dataDir := $svc.dataDir | default dict -}}
{{- $dataPvc := and $dataDir.env $dataDir.persistence $dataDir.persistence.enabled -}}
{{- if and $keda.enabled $svc.autoscaling.enabled }}
{{- fail (printf "services.%s: keda.enabled and autoscaling.enabled are exclusive (KEDA creates the HPA)" $name) }}
{{- end }}
{{- if and $dataPvc (not $dataDir.persistence.existingClaim) (or (gt (int $svc.replicas) 1) $svc.autoscaling.enabled $keda.enabled) }}
{{- fail (printf "services.%s: dataDir.persistence (a ReadWriteOnce volume) allows one replica only" $name) }}
{{- end }}
{{- $cachePath := printf "/var/cache/kloop/%s" $name -}}
{{- if and (eq $name "training") (eq ($svc.executor | default "local") "local") (or (gt (int $svc.replicas) 1) $svc.autoscaling.enabled) }}
{{- fail "services.training: the local executor runs with exactly one replica (use executor: kubernetes to scale out)" }}
{{- end }}
{{- if and $svc.serviceAccount $svc.serviceAccount.create }}
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
{{- if ne (toString $svc.service) "false" }}
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
    {{- if $grpc }}
    - name: grpc
      port: {{ $grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- end }}
    - name: http
      port: {{ $http }}
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- end }}
{{- if $dataPvc }}
{{- if not $dataDir.persistence.existingClaim }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ printf "%s-data" $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
spec:
  accessModes: [ReadWriteOnce]
  {{- with $dataDir.persistence.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ $dataDir.persistence.size }}
{{- end }}
{{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kloop.labels" $ctx | nindent 4 }}
spec:
  {{- if not (or $svc.autoscaling.enabled $keda.enabled) }}
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
      serviceAccountName: {{ $svc.serviceAccountName | default (ternary $fullname "default" (and $svc.serviceAccount $svc.serviceAccount.create | default false)) }}
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
          {{- with $svc.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- include "kloop.containerSecurityContext" $root | nindent 12 }}
          {{- if or $grpc $http }}
          ports:
            {{- if $grpc }}
            - name: grpc
              containerPort: {{ $grpc }}
              protocol: TCP
            {{- end }}
            {{- if $http }}
            - name: http
              containerPort: {{ $http }}
              protocol: TCP
            {{- end }}
          {{- end }}
          env:
            {{- if $grpc }}
            - name: KLOOP_{{ $prefix }}_GRPC_HOST
              value: "0.0.0.0"
            - name: KLOOP_{{ $prefix }}_GRPC_PORT
              value: {{ $grpc | quote }}
            {{- end }}
            {{- if $http }}
            - name: KLOOP_{{ $prefix }}_HTTP_HOST
              value: "0.0.0.0"
            - name: KLOOP_{{ $prefix }}_HTTP_PORT
              value: {{ $http | quote }}
            {{- end }}
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
            {{- range $dep := list "registry" "inference" "training" "gateway" "vectorstore" }}
            {{- if has $dep $svc.connects }}
            - name: KLOOP_{{ $prefix }}_{{ upper $dep }}_ADDR
              value: {{ include "kloop.service.addr" (dict "root" $root "name" $dep) | quote }}
            {{- end }}
            {{- end }}
            {{- /* The drift monitor's reports are HTTP: KLOOP_<SVC>_DRIFT_MONITOR_URL. */}}
            {{- if has "drift-monitor" $svc.connects }}
            - name: KLOOP_{{ $prefix }}_DRIFT_MONITOR_URL
              value: {{ include "kloop.service.url" (dict "root" $root "name" "drift-monitor") | quote }}
            {{- end }}
            {{- /* Qdrant server when there is one; else the embedded engine on dataDir. */}}
            {{- if and (has "qdrant" $svc.connects) (include "kloop.qdrant.url" $root) }}
            - name: KLOOP_{{ $prefix }}_BACKEND
              value: qdrant
            - name: KLOOP_{{ $prefix }}_QDRANT_URL
              value: {{ include "kloop.qdrant.url" $root | quote }}
            {{- end }}
            {{- if $dataDir.env }}
            - name: KLOOP_{{ $prefix }}_{{ $dataDir.env }}
              value: {{ printf "/var/lib/kloop/%s" $name | quote }}
            {{- end }}
            {{- if $svc.anthropic }}
            {{- if $svc.anthropic.existingSecret }}
            # Generative answers: the key comes from the Secret (never from values).
            - name: KLOOP_{{ $prefix }}_ANTHROPIC_API_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ $svc.anthropic.existingSecret }}
                  key: {{ $svc.anthropic.existingSecretKey }}
            - name: KLOOP_{{ $prefix }}_MODE
              value: generative
            {{- with $svc.anthropic.model }}
            - name: KLOOP_{{ $prefix }}_MODEL
              value: {{ . | quote }}
            {{- end }}
            {{- else }}
            # No Anthropic API key Secret: extractive answers, no LLM is ever called.
            - name: KLOOP_{{ $prefix }}_MODE
              value: extractive
            {{- end }}
            {{- end }}
            {{- with $svc.queues }}
            - name: KLOOP_{{ $prefix }}_QUEUES
              value: {{ toJson . | quote }}
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
          {{- if $svc.noProbes }}
          # No probe: the process has no health endpoint; when it dies the container exits
          # and the kubelet restarts it.
          {{- else if $svc.probes }}
          {{- toYaml $svc.probes | nindent 10 }}
          {{- else }}
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
              port: {{ $grpc }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          {{- end }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $svc.cacheDir.env }}
            - name: cache
              mountPath: {{ $cachePath }}
            {{- end }}
            {{- if $dataDir.env }}
            - name: data
              mountPath: {{ printf "/var/lib/kloop/%s" $name }}
            {{- end }}
            {{- range $svc.scratch }}
            - name: {{ .name }}
              mountPath: {{ .mountPath }}
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
        {{- if $dataDir.env }}
        - name: data
          {{- if $dataPvc }}
          persistentVolumeClaim:
            claimName: {{ $dataDir.persistence.existingClaim | default (printf "%s-data" $fullname) }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ $dataDir.sizeLimit | default "1Gi" }}
          {{- end }}
        {{- end }}
        {{- range $svc.scratch }}
        - name: {{ .name }}
          emptyDir:
            sizeLimit: {{ .sizeLimit | default "256Mi" }}
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
  {{- if not $http }}
  # No port: nothing may connect.
  ingress: []
  {{- else }}
  ingress:
    {{- if not $svc.metricsOnly }}
    # The API ports: the other pods of this release{{ if $svc.public }}, and the outside{{ end }}.
    - ports:
        {{- if $grpc }}
        - port: grpc
          protocol: TCP
        {{- end }}
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
{{- end }}
{{- if $keda.enabled }}
{{ include "kloop.kedaScaledObject" (dict "root" $root "ctx" $ctx "fullname" $fullname "svc" $svc) }}
{{- end }}
{{- end -}}
