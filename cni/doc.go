// Package cni groups the node-side pieces that enrol pods into the mesh:
// the chained CNI plugin, the node agent, the per-pod traffic redirection
// (cni/redirect) and ZDS, the protocol by which the node agent hands each
// pod's network namespace to ztunnel (cni/zds). It has no code of its own.
package cni
