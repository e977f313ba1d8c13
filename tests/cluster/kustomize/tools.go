//go:build tools

// Package tools pins the kustomize command built by tests/cluster/build, which Driftless runs to
// render kustomizations.
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
