{{/*
Names, labels and the checks that refuse unsafe values.
*/}}

{{- define "bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.fullname" -}}
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

{{- define "bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bridge.labels" -}}
helm.sh/chart: {{ include "bridge.chart" . }}
{{ include "bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bridge
{{- end }}

{{- define "bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "bridge.secretName" -}}
{{- default (include "bridge.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "bridge.isPostgres" -}}
{{- if eq .Values.store.type "postgresql" }}true{{ end }}
{{- end }}

{{/* Path of the rules file inside the pod. */}}
{{- define "bridge.rulesFile" -}}
{{- if .Values.rules }}/etc/bridge/rules.yaml{{ else }}/app/config/rules.yaml{{ end }}
{{- end }}

{{/* Prometheus label selector matching this release's scrape targets. */}}
{{- define "bridge.promSelector" -}}
job="{{ include "bridge.fullname" . }}", namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
bridge.yaml: the user's `config` with the keys the chart owns laid over it.
*/}}
{{- define "bridge.configYaml" -}}
{{- $managed := dict
  "server" (dict "host" "0.0.0.0" "port" 8080 "shutdown_grace_seconds" (int .Values.shutdownGraceSeconds))
  "rules" (dict "file" (include "bridge.rulesFile" .)) }}
{{- if not (include "bridge.isPostgres" .) }}
{{- $_ := set $managed "store" (dict "url" (printf "sqlite:///%s" .Values.store.sqlite.path)) }}
{{- end }}
{{- $cfg := mustMergeOverwrite (deepCopy .Values.config) $managed }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Refuse values that would start a broken or unsafe release. Included by the Deployment,
so `helm template` / `helm install` stop with one clear message.
*/}}
{{- define "bridge.validate" -}}
{{- $pg := include "bridge.isPostgres" . }}
{{- if and (not $pg) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "store.type=sqlite supports exactly one replica (replicaCount=%d): SQLite cannot be shared between pods. Set store.type=postgresql to run several replicas." (int .Values.replicaCount)) }}
{{- end }}
{{- if and (not $pg) .Values.autoscaling.enabled }}
{{- fail "store.type=sqlite supports exactly one replica, so autoscaling.enabled=true is refused. Set store.type=postgresql to autoscale." }}
{{- end }}
{{- if and (not $pg) (not (hasPrefix "/data/" .Values.store.sqlite.path)) }}
{{- fail (printf "store.sqlite.path must be under /data/ (the only writable volume), got %q" .Values.store.sqlite.path) }}
{{- end }}
{{- $owned := dict
  "server.host" "the chart listens on 0.0.0.0"
  "server.port" "the container port is 8080; change service.port"
  "server.shutdown_grace_seconds" "set shutdownGraceSeconds"
  "store.url" "set store.type, store.sqlite.path or secrets.storeUrl"
  "rules.file" "set rules"
  "admin.token" "set secrets.adminToken"
  "rootly.api_token" "set secrets.rootlyApiToken"
  "rootly.webhook_secret" "set secrets.rootlyWebhookSecret"
  "incident_io.api_key" "set secrets.incidentIoApiKey"
  "incident_io.webhook_secret" "set secrets.incidentIoWebhookSecret"
  "incident_io.alert_source_token" "set secrets.incidentIoAlertSourceToken" }}
{{- range $path, $hint := $owned }}
{{- $parts := splitList "." $path }}
{{- $group := index $.Values.config (index $parts 0) | default dict }}
{{- if hasKey $group (index $parts 1) }}
{{- fail (printf "config.%s is managed by the chart (%s); remove it from config" $path $hint) }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- $s := .Values.secrets }}
{{- $rootly := dig "rootly" "enabled" true .Values.config }}
{{- $incio := dig "incident_io" "enabled" true .Values.config }}
{{- $required := list (list "adminToken" $s.adminToken) }}
{{- if $rootly }}
{{- $required = concat $required (list (list "rootlyApiToken" $s.rootlyApiToken) (list "rootlyWebhookSecret" $s.rootlyWebhookSecret)) }}
{{- end }}
{{- if $incio }}
{{- $required = concat $required (list (list "incidentIoApiKey" $s.incidentIoApiKey) (list "incidentIoWebhookSecret" $s.incidentIoWebhookSecret)) }}
{{- end }}
{{- if $pg }}
{{- $required = concat $required (list (list "storeUrl" $s.storeUrl)) }}
{{- end }}
{{- range $required }}
{{- $key := index . 0 }}
{{- $val := index . 1 }}
{{- if not $val }}
{{- fail (printf "secrets.%s is required (or set secrets.existingSecret to a Secret you manage)" $key) }}
{{- end }}
{{- if has (lower $val) (list "changeme" "change-me" "change_me" "replace-me" "secret" "password" "todo" "xxx") }}
{{- fail (printf "secrets.%s is a placeholder (%q); the bridge refuses to start with it. Set a real value." $key $val) }}
{{- end }}
{{- end }}
{{- if and $pg (not (hasPrefix "postgresql" $s.storeUrl)) }}
{{- fail "secrets.storeUrl must be a postgresql:// URL when store.type=postgresql" }}
{{- end }}
{{- end }}
{{- end }}
