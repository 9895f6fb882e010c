// Package caroot keeps the in-cluster CA's root in a Kubernetes Secret and
// publishes its trust bundle in a ConfigMap.
//
// The Secret (default strait-system/strait-ca-root) holds:
//
//	ca.crt      the signing root, one PEM CERTIFICATE
//	ca.key      its private key, PEM PKCS#8 "PRIVATE KEY" (or SEC1 "EC PRIVATE KEY")
//	bundle.pem  optional: the trust bundle to publish, PEM certificates; it
//	            must contain ca.crt. Used during a root rotation so that
//	            verifiers trust the old and the new root at once.
//
// [Load] reads the Secret or, when it does not exist, generates a
// self-signed ECDSA P-256 root and creates the Secret. Replicas that start
// together race on that Create: the loser gets AlreadyExists, reads the
// winner's Secret and uses its root, so every replica ends with the same
// root. A Secret missing one of ca.crt and ca.key is an error, never
// overwritten.
//
// [PublishBundle] writes the bundle (ca.crt, then the rest of bundle.pem)
// to the ConfigMap (default strait-system/strait-ca-bundle) under
// roots.pem, which ztunnels mount and read.
package caroot
