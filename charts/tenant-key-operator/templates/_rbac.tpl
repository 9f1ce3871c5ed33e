{{/*
RBAC rules for the namespaced resources the operator works with: granted cluster-wide by the
ClusterRole, or per watched namespace by Roles when `watchNamespaces` is set.
*/}}
{{- define "tenant-key-operator.namespacedRules" -}}
# Watched; read one by one only before creating, adopting or revoking a key, so that the
# decision never rests on a lagging cache. The finalizer and the pending-key intent are
# written by server-side apply.
- apiGroups: ["imbursepayments.com"]
  resources: ["tenantsecuritykeys"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["imbursepayments.com"]
  resources: ["tenantsecuritykeys/status"]
  verbs: ["patch"]
# Watched, read when a key resolves its account, and given a Ready condition. While keys use
# an account, it (and its credentials Secret) carries the in-use finalizer, added and removed
# by JSON patch.
- apiGroups: ["imbursepayments.com"]
  resources: ["imburseaccounts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["imbursepayments.com"]
  resources: ["imburseaccounts/status"]
  verbs: ["patch"]
# Metadata watches map Secrets to keys and accounts; credentials and key Secrets are read
# with a GET. A new key Secret is created, an existing one written by server-side apply
# (`patch`, also for its dry run); `patch` also releases a retained Secret and holds a
# credentials Secret with the in-use finalizer.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- if .Values.rolloutRestart.enabled }}
# Rollout restarts: the pod template of the workloads a key lists in rolloutRestartTargets
# gets the new key's fingerprint as an annotation, once per key change. Each workload is read
# first, as only one whose restart-for annotation names the key is patched.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
{{ include "tenant-key-operator.eventRules" . }}
{{- end }}

{{/*
Events are created, then patched as a series when they repeat.
*/}}
{{- define "tenant-key-operator.eventRules" -}}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
RBAC rules for cluster-scoped resources, granted in both modes.
*/}}
{{- define "tenant-key-operator.clusterRules" -}}
# Watched, read when a key resolves its account, given a Ready condition, and held with the
# in-use finalizer while keys use it.
- apiGroups: ["imbursepayments.com"]
  resources: ["clusterimburseaccounts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["imbursepayments.com"]
  resources: ["clusterimburseaccounts/status"]
  verbs: ["patch"]
# The labels of a key's namespace, for a ClusterImburseAccount's namespace selector; watched
# (metadata only) so that a label change re-evaluates the keys of that namespace.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- if .Values.metrics.secure }}
# Secure metrics: a caller's bearer token is reviewed, then its access to `get /metrics`.
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}
{{- end }}
