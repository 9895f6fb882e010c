// Package istiointerop holds interop tests between Strait's HBONE
// implementation and Istio's Go pkg/hbone. It is a separate module so that
// Istio's large dependency graph never enters the main module.
package istiointerop
