{{/* The release's full name: the release name when it contains the chart's, as in `helm
install cove`, which makes the same names as deploy/kubernetes/ (cove-node, cove-api, …). */}}
{{- define "cove.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; called with (dict "root" $ "component" NAME). */}}
{{- define "cove.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "cove.selectorLabels" . }}
{{- end -}}

{{/* The labels that pick one component's pods; called as cove.labels is. */}}
{{- define "cove.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "cove.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cove.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cove.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The environment every role shares: the database URL from its Secret, the log format. */}}
{{- define "cove.commonEnv" -}}
- name: COVE_DATABASE
  valueFrom:
    secretKeyRef:
      name: {{ required "database.secretName is required" .Values.database.secretName }}
      key: {{ required "database.secretKey is required" .Values.database.secretKey }}
- name: COVE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}
