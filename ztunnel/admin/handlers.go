package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// endpoint is one admin endpoint for the index page.
type endpoint struct{ path, help string }

var adminEndpoints = []endpoint{
	{"/config_dump", "current configuration as JSON (redacted: no private keys)"},
	{"/logging", "GET: log level; POST or GET ?level=debug|info|warn|error: change it"},
	{"/debug/pprof/", "Go profiles (net/http/pprof)"},
	{"/quitquitquit", "POST: start graceful shutdown"},
}

// adminHandler is the admin server's mux, behind the loopback Host check
// and cross-origin protection.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveIndex)
	mux.HandleFunc("GET /config_dump", s.serveConfigDump)
	mux.HandleFunc("GET /logging", s.serveLogging)
	mux.HandleFunc("POST /logging", s.serveLogging)
	mux.HandleFunc("POST /quitquitquit", s.serveQuit)
	// pprof, mounted here explicitly; Index serves the named profiles
	// (heap, goroutine, allocs, block, mutex, threadcreate).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)

	var h http.Handler = http.NewCrossOriginProtection().Handler(mux)
	if s.loopback {
		h = loopbackHostOnly(h)
	}
	return h
}

// loopbackHostOnly refuses requests whose Host is not localhost or a
// loopback IP: a browser tricked by DNS rebinding sends the attacker's
// name.
func loopbackHostOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if !isLoopbackHost(host) {
			http.Error(w, "admin: Host "+r.Host+" refused: the admin server answers only to localhost and loopback addresses", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var b strings.Builder
	b.WriteString("Strait ztunnel admin\n\n")
	for _, e := range adminEndpoints {
		fmt.Fprintf(&b, "  %-16s %s\n", e.path, e.help)
	}
	fmt.Fprintf(&b, "\nreadiness: /healthz/ready on %s\nmetrics: /metrics and /stats/prometheus on %s\n",
		s.Addrs().Ready, s.Addrs().Metrics)
	io.WriteString(w, b.String())
}

func notConfigured(w http.ResponseWriter, what string) {
	http.Error(w, "admin: "+what+" not configured", http.StatusNotImplemented)
}

func (s *Server) serveConfigDump(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.ConfigDump == nil {
		notConfigured(w, "config dump")
		return
	}
	body, err := configDumpJSON(s.cfg.ConfigDump())
	if err != nil {
		s.log.Error("config_dump refused", zap.Error(err))
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// configDumpJSON marshals v after checking it holds no private key; the
// error never quotes key material.
func configDumpJSON(v any) ([]byte, error) {
	if path, found := findPrivateKey(v); found {
		return nil, fmt.Errorf("%w at %s: the app must pass a redacted view", ErrPrivateKey, path)
	}
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("admin: config dump: %w", err)
	}
	if bytes.Contains(body, pemMarker) {
		return nil, fmt.Errorf("%w in the JSON output: the app must pass a redacted view", ErrPrivateKey)
	}
	return append(body, '\n'), nil
}

// parseLevel accepts the four levels /logging offers.
func parseLevel(s string) (zapcore.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return zapcore.DebugLevel, nil
	case "info":
		return zapcore.InfoLevel, nil
	case "warn", "warning":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("admin: bad log level %q: want debug, info, warn or error", s)
}

func (s *Server) serveLogging(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "admin: logging: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !r.Form.Has("level") {
		if r.Method == http.MethodPost {
			http.Error(w, "admin: POST /logging needs level=debug|info|warn|error", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "level: %s\n", s.cfg.Level.Level())
		return
	}
	// A change through GET is a "safe" method to cross-origin protection:
	// refuse it from another browser origin here.
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		http.Error(w, "admin: cross-origin log level change refused", http.StatusForbidden)
		return
	}
	lvl, err := parseLevel(r.Form.Get("level"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	old := s.cfg.Level.Level()
	s.cfg.Level.SetLevel(lvl)
	s.log.Info("log level changed", zap.Stringer("from", old), zap.Stringer("to", lvl), zap.String("remote", r.RemoteAddr))
	fmt.Fprintf(w, "level: %s\n", lvl)
}

func (s *Server) serveQuit(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Quit == nil {
		notConfigured(w, "quit")
		return
	}
	s.quitOnce.Do(func() {
		s.log.Info("quitquitquit: starting graceful shutdown", zap.String("remote", r.RemoteAddr))
		go s.cfg.Quit()
	})
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "OK\n")
}

// readyHandler serves /healthz/ready.
func (s *Server) readyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", s.serveReady)
	return mux
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	err := s.Ready()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	state := int32(1)
	if err != nil {
		state = 2
	}
	if prev := s.lastOK.Swap(state); prev != state {
		if err != nil {
			s.log.Info("not ready", zap.Error(err))
		} else {
			s.log.Info("ready")
		}
	}
	if err == nil {
		io.WriteString(w, "ready\n")
		return
	}
	var b strings.Builder
	b.WriteString("not ready\n")
	for _, e := range unjoin(err) {
		var ce *CheckError
		if errors.As(e, &ce) {
			fmt.Fprintf(&b, "%s: %v\n", ce.Name, ce.Err)
		} else {
			fmt.Fprintf(&b, "%v\n", e)
		}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, b.String())
}

// unjoin splits an errors.Join error.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// metricsHandler serves /metrics and /stats/prometheus.
func (s *Server) metricsHandler() http.Handler {
	h := s.cfg.Metrics
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { notConfigured(w, "metrics") })
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /stats/prometheus", h)
	return mux
}
