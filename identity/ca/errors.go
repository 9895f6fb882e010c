package ca

import "errors"

// Sentinel errors returned (wrapped, with detail) by this package.
var (
	// ErrMalformedCSR: the bytes are not a DER PKCS#10 certificate request.
	ErrMalformedCSR = errors.New("malformed certificate signing request")
	// ErrBadCSRSignature: the CSR's self-signature does not verify, so the
	// requester has not proven possession of the private key.
	ErrBadCSRSignature = errors.New("certificate signing request signature does not verify")
	// ErrUnsupportedKey: the CSR's public key is not ECDSA P-256.
	ErrUnsupportedKey = errors.New("unsupported public key: only ECDSA P-256 is accepted")
	// ErrMissingURISAN: the CSR has no URI SAN.
	ErrMissingURISAN = errors.New("certificate signing request has no URI SAN")
	// ErrMultipleURISANs: the CSR has more than one URI SAN.
	ErrMultipleURISANs = errors.New("certificate signing request has more than one URI SAN")
	// ErrNotSPIFFEID: the URI SAN is not a valid SPIFFE ID.
	ErrNotSPIFFEID = errors.New("URI SAN is not a SPIFFE ID")
	// ErrForbiddenSAN: the CSR carries DNS, IP or email SANs.
	ErrForbiddenSAN = errors.New("certificate signing request carries a DNS, IP or email SAN")
	// ErrForeignTrustDomain: the SPIFFE ID is in another trust domain.
	ErrForeignTrustDomain = errors.New("SPIFFE ID is not in the CA's trust domain")
	// ErrInvalidIdentity: the SPIFFE ID's path is not /ns/<namespace>/sa/<serviceaccount>
	// or one of those parts is invalid.
	ErrInvalidIdentity = errors.New("SPIFFE ID is not a workload identity")
	// ErrNotAuthorized: the Authorizer refused the caller this identity.
	ErrNotAuthorized = errors.New("not authorized")
	// ErrInvalidTTL: a negative TTL was requested.
	ErrInvalidTTL = errors.New("invalid TTL")
	// ErrIssuerExpired: the signing certificate is not valid now (expired or
	// not yet valid), so nothing it signs would verify.
	ErrIssuerExpired = errors.New("signing certificate is not currently valid")
	// ErrInvalidConfig: New or an Issuer constructor was given unusable input.
	ErrInvalidConfig = errors.New("invalid CA configuration")
	// ErrKeyPermissions: a root key file is readable by group or others.
	ErrKeyPermissions = errors.New("private key file is readable by group or others")
)
