{{/*
Names are fixed (identityd-node, identityd-ca, identityd-ca-bundle, ...): the daemon and the CA
refer to each other by them, and the ClusterRoles are cluster-wide, so install one release per
cluster.
*/}}

{{- define "identityd.labels" -}}
app.kubernetes.io/name: identityd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "identityd.nodeSelectorLabels" -}}
app.kubernetes.io/name: identityd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{- define "identityd.caSelectorLabels" -}}
app.kubernetes.io/name: identityd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ca
{{- end }}

{{- define "identityd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* host:port of the CA's issuance service, as the node daemons dial it. */}}
{{- define "identityd.caEndpoint" -}}
identityd-ca.{{ .Release.Namespace }}.svc:8443
{{- end }}

{{/* The audience of the projected token nodes present to the CA (the CA reviews it with this). */}}
{{- define "identityd.caAudience" -}}
identityd-ca
{{- end }}
