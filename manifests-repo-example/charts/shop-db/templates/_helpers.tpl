{{/* The name of the Deployment and Service, and the prefix of the claim's. */}}
{{- define "shop-db.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The claim holding the data. */}}
{{- define "shop-db.claimName" -}}
{{- printf "%s-data" (include "shop-db.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of the Deployment and its Pods, and the Service's selector. Also the Deployment's
selector, which is immutable: keep them as they are. */}}
{{- define "shop-db.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shop-db.fullname" . }}
{{- end -}}

{{- define "shop-db.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
