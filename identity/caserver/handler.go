package caserver

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
)

// HandlerConfig configures NewHandler.
type HandlerConfig struct {
	// CA signs. Required; its Authorizer decides who gets what.
	CA *ca.CA
	// Authenticator checks bearer tokens. Required.
	Authenticator Authenticator
	// Roots is the published trust bundle, returned with every
	// certificate. Default: the CA's root.
	Roots []*x509.Certificate
	// Metrics and Logger may be nil.
	Metrics *Metrics
	Logger  *zap.Logger
}

type handler struct {
	ca      *ca.CA
	authn   Authenticator
	roots   []string
	metrics *Metrics
	log     *zap.Logger
}

// NewHandler returns the http.Handler of POST caapi.Path.
func NewHandler(cfg HandlerConfig) (http.Handler, error) {
	if cfg.CA == nil || cfg.Authenticator == nil {
		return nil, fmt.Errorf("caserver: handler: CA and Authenticator are required: %w", ca.ErrInvalidConfig)
	}
	h := &handler{ca: cfg.CA, authn: cfg.Authenticator, metrics: cfg.Metrics, log: cfg.Logger}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	roots := cfg.Roots
	if len(roots) == 0 {
		roots = cfg.CA.Bundle().X509Authorities()
	}
	for _, r := range roots {
		h.roots = append(h.roots, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})))
	}
	return h, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, caapi.ReasonMethodNotAllowed, "use POST")
		return
	}
	ctx := r.Context()
	token, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		h.metrics.request(ResultUnauthenticated)
		h.log.Info("certificate request refused: no bearer token", zap.String("remote", r.RemoteAddr))
		writeError(w, http.StatusUnauthorized, caapi.ReasonUnauthenticated, "missing Authorization: Bearer <service-account token with audience "+caapi.Audience+">")
		return
	}
	caller, err := h.authn.Authenticate(ctx, token)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			h.metrics.request(ResultUnauthenticated)
			h.log.Info("certificate request refused: unauthenticated", zap.String("remote", r.RemoteAddr), zap.Error(err))
			writeError(w, http.StatusUnauthorized, caapi.ReasonUnauthenticated, err.Error())
			return
		}
		h.internal(w, r, "authenticate", err)
		return
	}
	log := h.log.With(zap.Stringer("caller", caller.Identity), zap.String("node", caller.Node))

	var req caapi.CertificateRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, caapi.MaxRequestBytes))
	if err := dec.Decode(&req); err != nil {
		h.invalid(w, log, "request body is not a certificate request: "+err.Error())
		return
	}
	block, rest := pem.Decode([]byte(req.CSR))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) > 0 {
		h.invalid(w, log, `csr must be exactly one PEM "CERTIFICATE REQUEST" block`)
		return
	}
	if req.TTLSeconds < 0 {
		h.invalid(w, log, fmt.Sprintf("ttlSeconds %d is negative", req.TTLSeconds))
		return
	}
	ttl := time.Duration(min(req.TTLSeconds, math.MaxInt64/int64(time.Second))) * time.Second

	issued, err := h.ca.Sign(ctx, caller, block.Bytes, ttl)
	var lookup *LookupError
	switch {
	case err == nil:
	case errors.As(err, &lookup):
		h.internal(w, r, "authorize", err)
		return
	case errors.Is(err, ca.ErrNotAuthorized):
		reason, msg := denialOf(err)
		h.metrics.request(ResultDenied)
		h.metrics.deny(reason)
		log.Info("certificate request denied", zap.String("reason", string(reason)), zap.String("detail", msg))
		writeError(w, http.StatusForbidden, caapi.ReasonPermissionDenied, msg)
		return
	case isInvalid(err):
		h.invalid(w, log, err.Error())
		return
	default:
		h.internal(w, r, "sign", err)
		return
	}

	resp := caapi.CertificateResponse{Roots: h.roots}
	for _, c := range issued.Certificates {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	h.metrics.request(ResultIssued)
	log.Info("certificate issued", zap.Stringer("id", issued.ID), zap.Time("not_after", issued.NotAfter))
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) invalid(w http.ResponseWriter, log *zap.Logger, msg string) {
	h.metrics.request(ResultInvalid)
	log.Info("certificate request refused: invalid", zap.String("detail", msg))
	writeError(w, http.StatusBadRequest, caapi.ReasonInvalidRequest, msg)
}

func (h *handler) internal(w http.ResponseWriter, r *http.Request, step string, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The caller went away; nobody reads the answer.
		h.metrics.request(ResultError)
		return
	}
	h.metrics.request(ResultError)
	h.log.Error("certificate request failed", zap.String("step", step), zap.String("remote", r.RemoteAddr), zap.Error(err))
	writeError(w, http.StatusInternalServerError, caapi.ReasonInternal, step+": "+err.Error())
}

// isInvalid reports refusals that are the request's fault.
func isInvalid(err error) bool {
	for _, s := range []error{
		ca.ErrMalformedCSR, ca.ErrBadCSRSignature, ca.ErrUnsupportedKey, ca.ErrMissingURISAN,
		ca.ErrMultipleURISANs, ca.ErrNotSPIFFEID, ca.ErrForbiddenSAN, ca.ErrForeignTrustDomain,
		ca.ErrInvalidIdentity, ca.ErrInvalidTTL,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func writeError(w http.ResponseWriter, status int, reason caapi.Reason, msg string) {
	writeJSON(w, status, caapi.Error{Error: msg, Reason: reason})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
