// Package config reads the node proxy's YAML configuration file: the
// workloads, services, authorization policies and peer authentications it
// serves, for deployments without a control plane (and for tests and
// demos). The format is documented with a commented example in
// testdata/example.yaml and in README.md.
//
// [Parse] decodes strictly with yaml.v3's node API (unknown fields, wrong
// types, duplicate keys, bad addresses and prefixes, ports out of range,
// unknown enum values, missing fields, duplicate uids, IPs, VIPs and names
// are errors) and reports every problem at once, each a [*FieldError] of
// the form
//
//	config: example.yaml:14: workloads[1].ips[0]: "10.0.0.300" is not an IP address
//
// [File.Snapshot] turns a parsed file into a [store.Snapshot]. A [Watcher]
// keeps a [store.Store] in sync with the file: it polls it, applies valid
// changes atomically and keeps the previous configuration when a change is
// invalid.
//
// Dependencies point one way: config → store → rbac → identity.
package config
