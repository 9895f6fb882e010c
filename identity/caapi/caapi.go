// Package caapi is the wire contract of the Strait CA's HTTPS+JSON API,
// shared by the server (identity/caserver) and the node-side client
// (identity/caclient).
//
// One endpoint, POST [Path], with a bearer token: a projected
// service-account token whose audience is [Audience].
//
//	POST /v1/certificates
//	Authorization: Bearer <token>
//	{"csr": "-----BEGIN CERTIFICATE REQUEST-----...", "ttlSeconds": 86400}
//
//	200 {"certChain": ["<leaf PEM>", ...], "roots": ["<root PEM>", ...]}
//	4xx/5xx {"error": "<what went wrong>", "reason": "<Reason>"}
//
// ttlSeconds 0 or absent asks for the CA's default lifetime; larger values
// are capped at the CA's maximum. certChain is leaf first, then any
// intermediate, never the root; roots is the whole published trust bundle
// (two roots during a rotation).
package caapi

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Path of the certificate-signing endpoint.
const Path = "/v1/certificates"

// ReadyPath answers 200 once the CA can sign (root loaded, pod cache synced).
const ReadyPath = "/healthz/ready"

// Audience callers' tokens must be issued for.
const Audience = "strait-ca"

// DefaultPort the CA listens on.
const DefaultPort = 15012

// MaxRequestBytes bounds a request body.
const MaxRequestBytes = 64 << 10

// CertificateRequest is the body of POST Path.
type CertificateRequest struct {
	// CSR is one PEM "CERTIFICATE REQUEST" block (PKCS#10) carrying a single
	// spiffe:// URI SAN and an ECDSA P-256 key.
	CSR string `json:"csr"`
	// TTLSeconds is the requested lifetime; 0 means the CA's default.
	TTLSeconds int64 `json:"ttlSeconds,omitempty"`
}

// CertificateResponse is the 200 answer.
type CertificateResponse struct {
	// CertChain is PEM certificates, leaf first, root excluded.
	CertChain []string `json:"certChain"`
	// Roots is the trust bundle, one PEM certificate per element.
	Roots []string `json:"roots"`
}

// Error is the body of every non-200 answer.
type Error struct {
	// Error is a human-readable explanation, e.g. "no pod with service
	// account shop/web on node node-b".
	Error string `json:"error"`
	// Reason is one of the Reason constants.
	Reason Reason `json:"reason"`
}

// Reason classifies a refusal; each maps to one HTTP status.
type Reason string

// Reasons and their HTTP statuses.
const (
	ReasonUnauthenticated  Reason = "Unauthenticated"  // 401: no, invalid or non-service-account token, wrong audience
	ReasonPermissionDenied Reason = "PermissionDenied" // 403: the caller may not have this identity
	ReasonInvalidRequest   Reason = "InvalidRequest"   // 400: bad JSON, CSR or TTL
	ReasonInternal         Reason = "Internal"         // 500: the CA or the API server failed
	ReasonMethodNotAllowed Reason = "MethodNotAllowed" // 405: not a POST
)

// EncodeCertificates returns certs as concatenated PEM CERTIFICATE blocks.
func EncodeCertificates(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// ParseCertificates parses every PEM CERTIFICATE block of data. Other
// block types, trailing garbage and data without a certificate are errors.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	if len(bytes.TrimSpace(data)) > 0 {
		return nil, errors.New("trailing data after the last PEM block")
	}
	return out, nil
}
