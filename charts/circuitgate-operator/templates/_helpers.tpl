{{/* Names and labels shared by the templates. */}}

{{- define "circuitgate-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release name, plus the chart's unless it has it. */}}
{{- define "circuitgate-operator.fullname" -}}
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

{{- define "circuitgate-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "circuitgate-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "circuitgate-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "circuitgate-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: circuitgate
{{- end }}

{{- define "circuitgate-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "circuitgate-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "circuitgate-operator.peeringName" -}}
{{- default (include "circuitgate-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The MutatingWebhookConfiguration the operator manages (cluster-wide, so the namespace is
     in its name: two releases never share one). */}}
{{- define "circuitgate-operator.webhookName" -}}
{{- printf "%s.%s" (include "circuitgate-operator.fullname" .) .Release.Namespace | trunc 253 }}
{{- end }}

{{/* The Secret holding the certificate every replica's webhook server presents. */}}
{{- define "circuitgate-operator.webhookSecretName" -}}
{{- printf "%s-webhook-certificate" (include "circuitgate-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circuitgate-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "circuitgate-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circuitgate-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Rules for namespaced resources: in the ClusterRole when the operator serves all namespaces,
     else in a Role in each namespace it serves. Each rule is what the operator's code uses. */}}
{{- define "circuitgate-operator.namespacedRules" -}}
# Worker pods: watched (kopf event handler); the readiness-gate condition is written to status.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
{{- if and .Values.nodeRemediation.enabled .Values.nodeRemediation.evictPods }}
# Evicting the pods that tripped on a cordoned node (PodDisruptionBudgets apply).
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
{{- end }}
# Events: posted once, then their count bumped (a 409 on create reads the existing one).
- apiGroups: [""]
  resources: [events]
  verbs: [create, get, patch]
# Policies: watched, kopf's finalizer and progress annotations patched, status written.
- apiGroups: [circuitgate.io]
  resources: [circuitpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [circuitgate.io]
  resources: [circuitpolicies/status]
  verbs: [patch]
# CircuitStates: one per watched pod, created, its status written, deleted with its pod.
- apiGroups: [circuitgate.io]
  resources: [circuitstates]
  verbs: [get, list, watch, create, delete]
- apiGroups: [circuitgate.io]
  resources: [circuitstates/status]
  verbs: [patch]
{{- end }}

{{- define "circuitgate-operator.subjects" -}}
- kind: ServiceAccount
  name: {{ include "circuitgate-operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
