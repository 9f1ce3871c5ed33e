{{/*
Name of the chart, overridable.
*/}}
{{- define "tenant-key-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, with the chart name appended unless the
release name already contains it.
*/}}
{{- define "tenant-key-operator.fullname" -}}
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

{{- define "tenant-key-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "tenant-key-operator.labels" -}}
helm.sh/chart: {{ include "tenant-key-operator.chart" . }}
{{ include "tenant-key-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods; immutable once installed.
*/}}
{{- define "tenant-key-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenant-key-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tenant-key-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenant-key-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: by digest when one is given (the tag then only documents it).
*/}}
{{- define "tenant-key-operator.image" -}}
{{- $reference := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- with .Values.image.digest }}
{{- $reference = printf "%s@%s" $reference . }}
{{- end }}
{{- $reference }}
{{- end }}

{{/*
Secrets for pulling the image: the release's own and `global.imagePullSecrets`, as names or
as `name:` objects.
*/}}
{{- define "tenant-key-operator.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat (default list .Values.global.imagePullSecrets) .Values.imagePullSecrets }}
{{- $name := . }}
{{- if kindIs "map" . }}{{ $name = .name }}{{ end }}
{{- if not (has $name $secrets) }}{{ $secrets = append $secrets $name }}{{ end }}
{{- end }}
{{- range $secrets }}
- name: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
A probe on the health port, with the settings of `probe` (initialDelaySeconds, periodSeconds
and so on) over the defaults.
*/}}
{{- define "tenant-key-operator.probe" -}}
httpGet:
  path: {{ .path }}
  port: health
{{ toYaml .settings }}
{{- end }}

{{- define "tenant-key-operator.leaseName" -}}
{{- default (include "tenant-key-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "tenant-key-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
Namespace of an optional monitoring object: its own value, else the release namespace.
*/}}
{{- define "tenant-key-operator.monitoringNamespace" -}}
{{- default .root.Release.Namespace .namespace }}
{{- end }}
