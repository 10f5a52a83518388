{{/* Names: <release>-operator and <release>-sensor, cut to 63 characters. */}}
{{- define "stockade.operator" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "stockade.sensor" -}}
{{- printf "%s-sensor" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stockade.labels" -}}
app.kubernetes.io/part-of: stockade
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* component: operator or sensor */}}
{{- define "stockade.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "stockade.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
