{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, overridable. */}}
{{- define "driftless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name that prefixes namespaced objects: `<release>-driftless`, or the release name when
it already contains the chart name. 63 characters at most (it names a Service).
*/}}
{{- define "driftless.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): they are shared by every
namespace, so the release namespace is part of the name and two releases of the same name in
different namespaces never collide.
*/}}
{{- define "driftless.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "driftless.fullname" .) }}
{{- end }}

{{- define "driftless.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "driftless.labels" -}}
helm.sh/chart: {{ include "driftless.chart" . }}
{{ include "driftless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: driftless
{{- end }}

{{/* Labels that select the agent's pods (immutable in a Deployment: never change them). */}}
{{- define "driftless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the agent runs as. */}}
{{- define "driftless.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftless.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "driftless.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether the agent runs with leader election: exactly when there is more than one replica. */}}
{{- define "driftless.leaderElect" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* The namespaces the agent may write to (rbac.targetNamespaces, default: the release namespace), as a JSON list. */}}
{{- define "driftless.targetNamespaces" -}}
{{- $nss := .Values.rbac.targetNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $nss) }}
{{- end }}

{{/* Where the credential files of one source are mounted. */}}
{{- define "driftless.sourceDir" -}}
/etc/driftless/sources/{{ . }}
{{- end }}

{{/*
The credential files of every source, as a JSON list of
{source, field, file, secret, key, target}: `field` is the config-file setting (tokenFile...,
`commitStatus.tokenFile`, `notify.urlFile`, `notify.secretFile`), `file` the file name under the
source's directory, `target` the index in `notify` (notify files only: notify-<index>-url,
notify-<index>-secret, unique per source). Keys default to the conventional Secret keys
(kubernetes.io/basic-auth and kubernetes.io/ssh-auth use username/password and ssh-privatekey;
token, url and secret for commitStatus and notify).
*/}}
{{- define "driftless.credentialFiles" -}}
{{- $refs := list
  (list "auth" "tokenSecret" "tokenFile" "token" "token")
  (list "auth" "usernameSecret" "usernameFile" "username" "username")
  (list "auth" "passwordSecret" "passwordFile" "password" "password")
  (list "auth" "sshKeySecret" "sshKeyFile" "ssh-privatekey" "ssh-privatekey")
  (list "auth" "knownHostsSecret" "knownHostsFile" "known_hosts" "known_hosts")
  (list "auth" "passphraseSecret" "passphraseFile" "passphrase" "passphrase")
  (list "source" "webhookSecret" "webhookSecretFile" "webhook-secret" "secret") }}
{{- $out := list }}
{{- range $i, $src := .Values.sources }}
{{- range $refs }}
{{- $where := index . 0 }}{{ $value := index . 1 }}{{ $field := index . 2 }}{{ $file := index . 3 }}{{ $defaultKey := index . 4 }}
{{- $holder := ternary ($src.auth | default dict) $src (eq $where "auth") }}
{{- $ref := index $holder $value }}
{{- if $ref }}
{{- if not $ref.name }}
{{- fail (printf "sources[%d] (%s): %s%s needs the name of an existing Secret ({name: ..., key: ...})" $i (toString $src.name) (ternary "auth." "" (eq $where "auth")) $value) }}
{{- end }}
{{- $out = append $out (dict "source" $src.name "field" $field "file" $file "secret" $ref.name "key" (default $defaultKey $ref.key)) }}
{{- end }}
{{- end }}
{{- with ($src.commitStatus | default dict).tokenSecret }}
{{- if not .name }}
{{- fail (printf "sources[%d] (%s): commitStatus.tokenSecret needs the name of an existing Secret ({name: ..., key: ...})" $i (toString $src.name)) }}
{{- end }}
{{- $out = append $out (dict "source" $src.name "field" "commitStatus.tokenFile" "file" "commit-status-token" "secret" .name "key" (default "token" .key)) }}
{{- end }}
{{- range $n, $target := ($src.notify | default list) }}
{{- range list (list "urlSecret" "urlFile" "url") (list "secretSecret" "secretFile" "secret") }}
{{- $value := index . 0 }}{{ $field := index . 1 }}{{ $suffix := index . 2 }}
{{- $ref := index ($target | default dict) $value }}
{{- if $ref }}
{{- if not $ref.name }}
{{- fail (printf "sources[%d] (%s): notify[%d].%s needs the name of an existing Secret ({name: ..., key: ...})" $i (toString $src.name) $n $value) }}
{{- end }}
{{- $out = append $out (dict "source" $src.name "field" (printf "notify.%s" $field) "file" (printf "notify-%d-%s" $n $suffix) "secret" $ref.name "key" (default $suffix $ref.key) "target" $n) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The agent's config file (YAML), from `sources` and `sourceDefaults`. Checks what the agent would
refuse at start, and the chart's own rules, failing the render with the reason:
names, duplicate names, auth combinations, known_hosts for SSH, commitStatus (provider,
repository, tokenSecret, apiUrl for gitea) and notify targets (type, urlSecret, no secretSecret for
slack).
*/}}
{{- define "driftless.config" -}}
{{- $defaults := .Values.sourceDefaults }}
{{- $files := include "driftless.credentialFiles" . | fromJsonArray }}
{{- $seen := dict }}
{{- $sources := list }}
{{- range $i, $src := .Values.sources }}
{{- $name := toString ($src.name | default "") }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$" $name) }}
{{- fail (printf "sources[%d]: name %q must be 1-53 lowercase letters, digits or '-', starting and ending with a letter or digit (it names the ApplySet parent driftless-<name>)" $i $name) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "sources[%d]: source %q is listed twice" $i $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- if not $src.repo }}
{{- fail (printf "sources[%d] (%s): repo is required" $i $name) }}
{{- end }}
{{- $auth := $src.auth | default dict }}
{{- $token := not (empty $auth.tokenSecret) }}
{{- $basic := not (and (empty $auth.usernameSecret) (empty $auth.passwordSecret)) }}
{{- /* SSH by the agent's rule: an ssh://, ssh+git:// or git+ssh:// URL, or scp-like [user@]host:path (a ':' before any '/') */}}
{{- $repo := toString $src.repo }}
{{- $sshUrl := or (regexMatch "(?i)^(ssh|ssh\\+git|git\\+ssh)://" $repo) (and (not (contains "://" $repo)) (regexMatch "^[^/]*:" $repo)) }}
{{- $ssh := or (not (empty $auth.sshKeySecret)) (not (empty $auth.knownHostsSecret)) (not (empty $auth.passphraseSecret)) $sshUrl }}
{{- $kinds := 0 }}
{{- range list $token $basic $ssh }}{{ if . }}{{ $kinds = add1 $kinds }}{{ end }}{{ end }}
{{- if gt $kinds 1 }}
{{- fail (printf "sources[%d] (%s): choose one kind of auth: tokenSecret (+username), usernameSecret+passwordSecret, or sshKeySecret+knownHostsSecret (an ssh repo URL needs the SSH kind)" $i $name) }}
{{- end }}
{{- if and $basic (not (and $auth.usernameSecret $auth.passwordSecret)) }}
{{- fail (printf "sources[%d] (%s): basic auth needs both auth.usernameSecret and auth.passwordSecret" $i $name) }}
{{- end }}
{{- if and $auth.username (not $token) }}
{{- fail (printf "sources[%d] (%s): auth.username goes with auth.tokenSecret only" $i $name) }}
{{- end }}
{{- if and $ssh (not $auth.sshKeySecret) }}
{{- fail (printf "sources[%d] (%s): an SSH source needs auth.sshKeySecret (the private key) and auth.knownHostsSecret" $i $name) }}
{{- end }}
{{- if and $ssh (not $auth.knownHostsSecret) }}
{{- fail (printf "sources[%d] (%s): known_hosts is mandatory for SSH sources: set auth.knownHostsSecret ({name: <secret>, key: known_hosts}) so the git host's key is verified" $i $name) }}
{{- end }}
{{- $cs := $src.commitStatus }}
{{- if $cs }}
{{- $provider := toString ($cs.provider | default "") }}
{{- if not (has $provider (list "github" "gitlab" "gitea")) }}
{{- fail (printf "sources[%d] (%s): commitStatus.provider must be github, gitlab or gitea (got %q)" $i $name $provider) }}
{{- end }}
{{- if not $cs.tokenSecret }}
{{- fail (printf "sources[%d] (%s): commitStatus.tokenSecret is required: the Secret holding the forge's API token ({name: <secret>, key: token}), mounted for the agent as tokenFile" $i $name) }}
{{- end }}
{{- if empty (toString ($cs.repository | default "")) }}
{{- fail (printf "sources[%d] (%s): commitStatus.repository is required: owner/name (on GitLab also group/.../project or a numeric project id)" $i $name) }}
{{- end }}
{{- if and (eq $provider "gitea") (not $cs.apiUrl) }}
{{- fail (printf "sources[%d] (%s): commitStatus.apiUrl is required for provider gitea (its API root, e.g. https://gitea.example.com/api/v1); github and gitlab default to their public APIs" $i $name) }}
{{- end }}
{{- end }}
{{- range $n, $target := ($src.notify | default list) }}
{{- $type := toString (($target | default dict).type | default "") }}
{{- if not (has $type (list "webhook" "slack")) }}
{{- fail (printf "sources[%d] (%s): notify[%d].type must be webhook or slack (got %q)" $i $name $n $type) }}
{{- end }}
{{- if not $target.urlSecret }}
{{- fail (printf "sources[%d] (%s): notify[%d].urlSecret is required: the Secret holding the %s URL ({name: <secret>, key: url}), mounted for the agent as urlFile" $i $name $n (ternary "Slack incoming webhook" "webhook" (eq $type "slack"))) }}
{{- end }}
{{- if and (eq $type "slack") $target.secretSecret }}
{{- fail (printf "sources[%d] (%s): notify[%d].secretSecret is for type webhook only (a Slack incoming webhook is not signed): remove it" $i $name $n) }}
{{- end }}
{{- end }}
{{- /* the config entry: fixed keys, then every default the source does not override */}}
{{- $entry := dict "name" $name "repo" (toString $src.repo) }}
{{- if $src.ref }}{{ $_ := set $entry "ref" (toString $src.ref) }}{{ end }}
{{- if $src.path }}{{ $_ := set $entry "path" (toString $src.path) }}{{ end }}
{{- $_ := set $entry "namespace" (coalesce $src.namespace $defaults.namespace $.Release.Namespace) }}
{{- range $key := list "interval" "prune" "allowEmpty" "maxPrunePercent" "prunable" "selfHeal" "healthTimeout" "timeout" "maxFetchBytes" "insecureHttp" "render" "renderTimeout" "allowRemoteBases" "rollback" }}
{{- if hasKey $src $key }}
{{- $_ := set $entry $key (index $src $key) }}
{{- else if hasKey $defaults $key }}
{{- $_ := set $entry $key (index $defaults $key) }}
{{- end }}
{{- end }}
{{- $authOut := dict }}
{{- $statusFiles := dict }}
{{- $notifyFiles := dict }}
{{- if $auth.username }}{{ $_ := set $authOut "username" (toString $auth.username) }}{{ end }}
{{- range $files }}
{{- if eq .source $name }}
{{- $path := printf "%s/%s" (include "driftless.sourceDir" $name) .file }}
{{- if eq .field "webhookSecretFile" }}
{{- $_ := set $entry "webhookSecretFile" $path }}
{{- else if hasPrefix "commitStatus." .field }}
{{- $_ := set $statusFiles (trimPrefix "commitStatus." .field) $path }}
{{- else if hasPrefix "notify." .field }}
{{- $key := printf "%d" (int .target) }}
{{- $_ := set $notifyFiles $key (merge (dict (trimPrefix "notify." .field) $path) (get $notifyFiles $key | default dict)) }}
{{- else }}
{{- $_ := set $authOut .field $path }}
{{- end }}
{{- end }}
{{- end }}
{{- if $src.helm }}{{ $_ := set $entry "helm" $src.helm }}{{ end }}
{{- if $authOut }}{{ $_ := set $entry "auth" $authOut }}{{ end }}
{{- with $cs }}
{{- $status := dict "provider" (toString .provider) "repository" (toString .repository) "tokenFile" $statusFiles.tokenFile }}
{{- if .apiUrl }}{{ $_ := set $status "apiUrl" (toString .apiUrl) }}{{ end }}
{{- $_ := set $entry "commitStatus" $status }}
{{- end }}
{{- if $src.notify }}
{{- $targets := list }}
{{- range $n, $target := $src.notify }}
{{- $paths := get $notifyFiles (printf "%d" $n) }}
{{- $hook := dict "type" (toString $target.type) "urlFile" $paths.urlFile }}
{{- if $paths.secretFile }}{{ $_ := set $hook "secretFile" $paths.secretFile }}{{ end }}
{{- if $target.events }}{{ $_ := set $hook "events" $target.events }}{{ end }}
{{- $targets = append $targets $hook }}
{{- end }}
{{- $_ := set $entry "notify" $targets }}
{{- end }}
{{- $sources = append $sources $entry }}
{{- end }}
{{- toYaml (dict "sources" $sources) }}
{{- end }}

{{/*
Refuses extraClusterRules that grant escalate, bind or impersonate (or `*` verbs where those
apply) unless rbac.allowPrivilegedVerbs is true.
*/}}
{{- define "driftless.checkClusterRules" -}}
{{- if not .Values.rbac.allowPrivilegedVerbs }}
{{- range $i, $rule := .Values.rbac.extraClusterRules }}
{{- $verbs := $rule.verbs | default list }}
{{- range list "escalate" "bind" "impersonate" }}
{{- if has . $verbs }}
{{- fail (printf "rbac.extraClusterRules[%d] grants %q: set rbac.allowPrivilegedVerbs=true if that is really intended" $i .) }}
{{- end }}
{{- end }}
{{- if has "*" $verbs }}
{{- $groups := $rule.apiGroups | default list }}
{{- $resources := $rule.resources | default list }}
{{- $sensitive := or (has "*" $groups) (has "*" $resources) (has "rbac.authorization.k8s.io" $groups) (has "users" $resources) (has "groups" $resources) (has "serviceaccounts" $resources) (has "userextras" $resources) (has "uids" $resources) }}
{{- if $sensitive }}
{{- fail (printf "rbac.extraClusterRules[%d]: verbs [\"*\"] there include escalate, bind or impersonate: list the verbs, or set rbac.allowPrivilegedVerbs=true if that is really intended" $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
