{{/* Names, labels and the pieces every walstream pod shares. */}}

{{- define "walstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: <release>-walstream, or the release name when it already contains the chart name. */}}
{{- define "walstream.fullname" -}}
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

{{/* A component's resource name: walstream.componentName (dict "root" $ "name" "api"). */}}
{{- define "walstream.componentName" -}}
{{- $prefix := include "walstream.fullname" .root | trunc (int (sub 62 (len .name))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .name }}
{{- end }}

{{- define "walstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "walstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "walstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "walstream.labels" -}}
helm.sh/chart: {{ include "walstream.chart" . }}
{{ include "walstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: walstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: walstream.componentSelectorLabels (dict "root" $ "component" "worker" "group" "default"). */}}
{{- define "walstream.componentSelectorLabels" -}}
{{ include "walstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .group }}
walstream.io/worker-group: {{ . }}
{{- end }}
{{- end }}

{{- define "walstream.componentLabels" -}}
{{ include "walstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .group }}
walstream.io/worker-group: {{ . }}
{{- end }}
{{- end }}

{{- define "walstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "walstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "walstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "walstream.namespacesConfigMap" -}}
{{- include "walstream.componentName" (dict "root" . "name" "namespaces") }}
{{- end }}

{{/*
The namespace documents, checked: each one's name defaults to its key and must match it, and every namespace
a worker group lists must exist. Renders a map of file name -> YAML text.
*/}}
{{- define "walstream.namespaceFiles" -}}
{{- $files := dict }}
{{- range $key, $doc := .Values.namespaces }}
{{- if and (hasKey $doc "name") (ne (toString (get $doc "name")) $key) }}
{{- fail (printf "namespaces.%s: its name is %q; it must be %q (the key)" $key (toString (get $doc "name")) $key) }}
{{- end }}
{{- $_ := set $files (printf "%s.yaml" $key) (merge (dict "name" $key) (deepCopy $doc) | toYaml) }}
{{- end }}
{{- range .Values.workers.groups }}
{{- $group := .name }}
{{- range .namespaces }}
{{- if not (hasKey $.Values.namespaces .) }}
{{- fail (printf "workers.groups[%s] lists namespace %q, which is not defined under namespaces" $group .) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/* The environment every walstream container gets. */}}
{{- define "walstream.env" -}}
- name: WALSTREAM_STACK_MODE
  value: external
- name: WALSTREAM_KAFKA_BOOTSTRAP
  value: {{ .Values.endpoints.kafkaBootstrap | quote }}
- name: WALSTREAM_CASSANDRA_CONTACT
  value: {{ .Values.endpoints.cassandraContact | quote }}
- name: WALSTREAM_ELASTICSEARCH_URL
  value: {{ .Values.endpoints.elasticsearchUrl | quote }}
- name: WALSTREAM_NAMESPACE_DIR
  value: /etc/walstream/namespaces
- name: WALSTREAM_DATA_DIR
  value: /var/lib/walstream
{{- /* walstream binds loopback unless told; probes and Prometheus reach the pod IP. */}}
- name: WALSTREAM_METRICS_HOST
  value: "0.0.0.0"
{{- with .Values.replicationFactor }}
- name: WALSTREAM_REPLICATION_FACTOR
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The pod-level fields every walstream pod shares (service account, security context, volumes of scratch space and
namespaces). Call with (dict "root" $ "role" R), R one of api, worker, retry, namespaces-apply: the API pod mounts
the tokens Secret. Add "configMap" and "serviceAccount" to use other ones than the release's (the pre-install hook
does).
*/}}
{{- define "walstream.podCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ .serviceAccount | default (include "walstream.serviceAccountName" $root) }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ $root.Values.volumes.tmpSizeLimit }}
  - name: data
    emptyDir:
      sizeLimit: {{ $root.Values.volumes.dataSizeLimit }}
  - name: namespaces
    configMap:
      name: {{ .configMap | default (include "walstream.namespacesConfigMap" $root) }}
  {{- if and (eq .role "api") $root.Values.auth.existingSecret }}
  - name: auth
    secret:
      secretName: {{ $root.Values.auth.existingSecret }}
      # 0440, like the cluster credentials: the owner (root) and the pod's fsGroup read.
      defaultMode: 288
      items:
        - key: {{ $root.Values.auth.key }}
          path: tokens.yaml
  {{- end }}
  {{- with include "walstream.securityVolumes" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The container fields every walstream container shares: image, security context, env and mounts. Call with
(dict "root" $ "role" R), R as for walstream.podCommon. */}}
{{- define "walstream.containerCommon" -}}
{{- $root := .root -}}
image: {{ include "walstream.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
workingDir: /var/lib/walstream
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
env:
  {{- include "walstream.env" $root | nindent 2 }}
  {{- if eq .role "api" }}
  - name: WALSTREAM_API_HOST
    value: "0.0.0.0"
  {{- end }}
  {{- if and (eq .role "api") $root.Values.auth.existingSecret }}
  - name: WALSTREAM_API_TOKENS_FILE
    value: /etc/walstream/auth/tokens.yaml
  {{- end }}
  {{- with include "walstream.securityEnv" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- with $root.Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: data
    mountPath: /var/lib/walstream
  - name: namespaces
    mountPath: /etc/walstream/namespaces
    readOnly: true
  {{- if and (eq .role "api") $root.Values.auth.existingSecret }}
  - name: auth
    mountPath: /etc/walstream/auth
    readOnly: true
  {{- end }}
  {{- with include "walstream.securityMounts" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Probes and the metrics port of a long-running container. */}}
{{- define "walstream.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end }}

{{/* Pod annotations: the user's, plus a checksum of the namespaces so a change rolls the pods. */}}
{{- define "walstream.podAnnotations" -}}
checksum/namespaces: {{ include "walstream.namespaceFiles" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A worker group's KEDA settings: the global ones, overridden by the group's. */}}
{{- define "walstream.groupKeda" -}}
{{- $keda := deepCopy .root.Values.workers.keda }}
{{- range $key, $value := (.group.keda | default dict) }}
{{- $_ := set $keda $key $value }}
{{- end }}
{{- toYaml $keda }}
{{- end }}

{{/*
Client security (values `security`). Which clusters a pod talks to, by its role: the API and the retry worker use
Kafka alone (`walstream api`, `walstream worker --retry`); the fan-out workers, `namespaces apply` and `verify` also reach
Cassandra and Elasticsearch. A pod gets the settings and Secrets of those services only.
*/}}
{{- define "walstream.services" -}}
{{- if has .role (list "worker" "namespaces-apply" "verify") }}kafka cassandra elasticsearch{{ else }}kafka{{ end }}
{{- end }}

{{/* One service's settings under `security` (an empty map when unset): walstream.securityOf (dict "root" $ "service" "kafka"). */}}
{{- define "walstream.securityOf" -}}
{{- get (.root.Values.security | default dict) .service | default dict | toYaml }}
{{- end }}

{{/*
The Secret keys one service mounts as files, each {env, secret, key, file}: the Secret's key `key` becomes
/etc/walstream/secrets/<service>/<file>, and the variable `env` names that path.
*/}}
{{- define "walstream.secretFiles" -}}
{{- $security := include "walstream.securityOf" . | fromYaml }}
{{- $prefix := printf "WALSTREAM_%s_" (upper .service) }}
{{- $files := list }}
{{- with $security.passwordSecret }}
{{- $files = append $files (dict "env" (print $prefix "PASSWORD_FILE") "secret" .name "key" .key "file" "password") }}
{{- end }}
{{- with $security.apiKeySecret }}
{{- $files = append $files (dict "env" (print $prefix "API_KEY_FILE") "secret" .name "key" .key "file" "api-key") }}
{{- end }}
{{- with $security.caSecret }}
{{- $files = append $files (dict "env" (print $prefix "CA_FILE") "secret" .name "key" .key "file" "ca.crt") }}
{{- end }}
{{- with $security.clientCertSecret }}
{{- $files = append $files (dict "env" (print $prefix "CERT_FILE") "secret" .name "key" .certKey "file" "tls.crt") }}
{{- $files = append $files (dict "env" (print $prefix "KEY_FILE") "secret" .name "key" .keyKey "file" "tls.key") }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
What the schema cannot say about `security`: the settings that only work together, as walstream itself insists
(streams/config.py), named by their values so the message says what to fix.
*/}}
{{- define "walstream.checkSecurity" -}}
{{- $kafka := include "walstream.securityOf" (dict "root" . "service" "kafka") | fromYaml }}
{{- $protocol := $kafka.protocol | default "PLAINTEXT" }}
{{- if eq $protocol "SASL_SSL" }}
{{- if not $kafka.username }}
{{- fail "security.kafka.username: protocol SASL_SSL needs a username (and security.kafka.passwordSecret)" }}
{{- end }}
{{- if not $kafka.passwordSecret }}
{{- fail "security.kafka.passwordSecret: protocol SASL_SSL needs the password from a Secret ({name, key})" }}
{{- end }}
{{- else if or $kafka.username $kafka.passwordSecret }}
{{- fail (printf "security.kafka.username and security.kafka.passwordSecret: SASL credentials need protocol SASL_SSL (it is %s)" $protocol) }}
{{- end }}
{{- if and (eq $protocol "PLAINTEXT") (or $kafka.caSecret $kafka.clientCertSecret) }}
{{- fail "security.kafka.caSecret and security.kafka.clientCertSecret: TLS files need protocol SSL or SASL_SSL (it is PLAINTEXT)" }}
{{- end }}
{{- $cassandra := include "walstream.securityOf" (dict "root" . "service" "cassandra") | fromYaml }}
{{- if and $cassandra.username (not $cassandra.passwordSecret) }}
{{- fail "security.cassandra.passwordSecret: security.cassandra.username needs the password from a Secret ({name, key})" }}
{{- end }}
{{- if and $cassandra.passwordSecret (not $cassandra.username) }}
{{- fail "security.cassandra.username: security.cassandra.passwordSecret needs the username it belongs to" }}
{{- end }}
{{- if and (not $cassandra.tls) (or $cassandra.caSecret $cassandra.clientCertSecret) }}
{{- fail "security.cassandra.caSecret and security.cassandra.clientCertSecret: TLS files need security.cassandra.tls: true" }}
{{- end }}
{{- $elasticsearch := include "walstream.securityOf" (dict "root" . "service" "elasticsearch") | fromYaml }}
{{- if and $elasticsearch.username $elasticsearch.apiKeySecret }}
{{- fail "security.elasticsearch.username and security.elasticsearch.apiKeySecret are alternatives: set one" }}
{{- end }}
{{- if and $elasticsearch.username (not $elasticsearch.passwordSecret) }}
{{- fail "security.elasticsearch.passwordSecret: security.elasticsearch.username needs the password from a Secret ({name, key})" }}
{{- end }}
{{- if and $elasticsearch.passwordSecret (not $elasticsearch.username) }}
{{- fail "security.elasticsearch.username: security.elasticsearch.passwordSecret needs the username it belongs to" }}
{{- end }}
{{- if and $elasticsearch.caSecret $elasticsearch.fingerprint }}
{{- fail "security.elasticsearch.caSecret and security.elasticsearch.fingerprint are alternatives: set one" }}
{{- end }}
{{- if and (or $elasticsearch.caSecret $elasticsearch.fingerprint) (not (hasPrefix "https://" .Values.endpoints.elasticsearchUrl)) }}
{{- fail (printf "security.elasticsearch.caSecret and security.elasticsearch.fingerprint: TLS follows the URL, and endpoints.elasticsearchUrl %q is not https://" .Values.endpoints.elasticsearchUrl) }}
{{- end }}
{{- $owned := dict
  "WALSTREAM_KAFKA_SECURITY_PROTOCOL" "security.kafka.protocol"
  "WALSTREAM_KAFKA_SASL_MECHANISM" "security.kafka.saslMechanism"
  "WALSTREAM_KAFKA_USERNAME" "security.kafka.username"
  "WALSTREAM_KAFKA_PASSWORD" "security.kafka.passwordSecret"
  "WALSTREAM_KAFKA_CA_FILE" "security.kafka.caSecret"
  "WALSTREAM_KAFKA_CERT_FILE" "security.kafka.clientCertSecret"
  "WALSTREAM_KAFKA_KEY_FILE" "security.kafka.clientCertSecret"
  "WALSTREAM_CASSANDRA_USERNAME" "security.cassandra.username"
  "WALSTREAM_CASSANDRA_PASSWORD" "security.cassandra.passwordSecret"
  "WALSTREAM_CASSANDRA_TLS" "security.cassandra.tls"
  "WALSTREAM_CASSANDRA_CA_FILE" "security.cassandra.caSecret"
  "WALSTREAM_CASSANDRA_VERIFY_HOSTNAME" "security.cassandra.verifyHostname"
  "WALSTREAM_CASSANDRA_CERT_FILE" "security.cassandra.clientCertSecret"
  "WALSTREAM_CASSANDRA_KEY_FILE" "security.cassandra.clientCertSecret"
  "WALSTREAM_ELASTICSEARCH_USERNAME" "security.elasticsearch.username"
  "WALSTREAM_ELASTICSEARCH_PASSWORD" "security.elasticsearch.passwordSecret"
  "WALSTREAM_ELASTICSEARCH_API_KEY" "security.elasticsearch.apiKeySecret"
  "WALSTREAM_ELASTICSEARCH_CA_FILE" "security.elasticsearch.caSecret"
  "WALSTREAM_ELASTICSEARCH_FINGERPRINT" "security.elasticsearch.fingerprint"
}}
{{- range .Values.extraEnv }}
{{- $name := toString .name }}
{{- $setting := get $owned (trimSuffix "_FILE" $name) | default (get $owned $name) }}
{{- if $setting }}
{{- fail (printf "extraEnv: %s is set by the chart from %s (secrets only as files from a Secret): use that instead" $name $setting) }}
{{- end }}
{{- if has $name (list "WALSTREAM_API_HOST" "WALSTREAM_METRICS_HOST") }}
{{- fail (printf "extraEnv: the chart sets %s to 0.0.0.0, so that probes, Prometheus and Services reach the pod" $name) }}
{{- end }}
{{- end }}
{{- $files := 0 }}
{{- range $service := list "kafka" "cassandra" "elasticsearch" }}
{{- $files = add $files (len (include "walstream.secretFiles" (dict "root" $ "service" $service) | fromYamlArray)) }}
{{- end }}
{{- if and (or $files .Values.auth.existingSecret) (not (.Values.podSecurityContext | default dict).fsGroup) }}
{{- fail "podSecurityContext.fsGroup: the security and auth Secrets are mounted readable by the pod's fsGroup (mode 0440); set it" }}
{{- end }}
{{- end }}

{{/* The security settings of the services a role talks to: plain settings as values, secrets as *_FILE paths. */}}
{{- define "walstream.securityEnv" -}}
{{- include "walstream.checkSecurity" .root }}
{{- $root := .root }}
{{- range $service := include "walstream.services" . | splitList " " }}
{{- $security := include "walstream.securityOf" (dict "root" $root "service" $service) | fromYaml }}
{{- if eq $service "kafka" }}
{{- $protocol := $security.protocol | default "PLAINTEXT" }}
{{- if ne $protocol "PLAINTEXT" }}
- name: WALSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ $protocol | quote }}
{{- end }}
{{- if eq $protocol "SASL_SSL" }}
- name: WALSTREAM_KAFKA_SASL_MECHANISM
  value: {{ $security.saslMechanism | default "SCRAM-SHA-512" | quote }}
- name: WALSTREAM_KAFKA_USERNAME
  value: {{ $security.username | quote }}
{{- end }}
{{- else if eq $service "cassandra" }}
{{- with $security.username }}
- name: WALSTREAM_CASSANDRA_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $security.tls }}
- name: WALSTREAM_CASSANDRA_TLS
  value: "true"
- name: WALSTREAM_CASSANDRA_VERIFY_HOSTNAME
  value: {{ ternary $security.verifyHostname true (kindIs "bool" $security.verifyHostname) | toString | quote }}
{{- end }}
{{- else if eq $service "elasticsearch" }}
{{- with $security.username }}
- name: WALSTREAM_ELASTICSEARCH_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with $security.fingerprint }}
- name: WALSTREAM_ELASTICSEARCH_FINGERPRINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- range include "walstream.secretFiles" (dict "root" $root "service" $service) | fromYamlArray }}
- name: {{ .env }}
  value: {{ printf "/etc/walstream/secrets/%s/%s" $service .file | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One read-only projected volume per service with Secrets, holding every Secret key that service needs (one source
per Secret).
*/}}
{{- define "walstream.securityVolumes" -}}
{{- $root := .root }}
{{- range $service := include "walstream.services" . | splitList " " }}
{{- with include "walstream.secretFiles" (dict "root" $root "service" $service) | fromYamlArray }}
{{- $secrets := list }}
{{- range . }}
{{- $secrets = append $secrets .secret }}
{{- end }}
- name: {{ $service }}-secrets
  projected:
    # 0440: the owner (root) and the pod's fsGroup read; nobody writes.
    defaultMode: 288
    sources:
      {{- $files := . }}
      {{- range $secret := $secrets | uniq }}
      - secret:
          name: {{ $secret }}
          items:
            {{- range $files }}
            {{- if eq .secret $secret }}
            - key: {{ .key | quote }}
              path: {{ .file }}
            {{- end }}
            {{- end }}
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "walstream.securityMounts" -}}
{{- $root := .root }}
{{- range $service := include "walstream.services" . | splitList " " }}
{{- if include "walstream.secretFiles" (dict "root" $root "service" $service) | fromYamlArray }}
- name: {{ $service }}-secrets
  mountPath: /etc/walstream/secrets/{{ $service }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
