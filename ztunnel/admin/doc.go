// Package admin runs the node proxy's three small HTTP servers, on the
// ports Istio's ztunnel uses:
//
//	127.0.0.1:15000  admin (loopback only)
//	    /                 the list of endpoints
//	    /config_dump      JSON of the app's redacted configuration view
//	    /logging          GET: the log level; POST or GET ?level=debug|info|warn|error: change it
//	    /debug/pprof/     net/http/pprof, mounted on this server's own mux
//	    /quitquitquit     POST: start graceful shutdown
//	:15021           readiness
//	    /healthz/ready    200 "ready" when every registered Check passes, else 503 and the reasons
//	:15020           metrics
//	    /metrics          the metrics handler the app passes (the metrics package's)
//	    /stats/prometheus the same, as Istio names it
//
// The package knows nothing of the data path: the app passes functions
// (ConfigDump, Quit, readiness Checks), a zap.AtomicLevel and an
// http.Handler.
//
// # Security
//
// The admin server can change the log level, stop the proxy and profile
// it, so New refuses an admin address that is not a loopback IP or
// "localhost" unless Config.AllowNonLoopback is set (ErrNonLoopback). While
// it is loopback-only it also answers 403 to requests whose Host header is
// not localhost or a loopback IP (DNS rebinding), and state-changing
// requests from another browser origin are refused
// (http.CrossOriginProtection, and the same check for GET /logging?level=).
//
// The app must hand /config_dump a redacted view, without private keys. As
// a safety net the dump is refused (500, ErrPrivateKey logged) when the
// value holds a private key (any value with a Public() crypto.PublicKey
// method, such as *ecdsa.PrivateKey or ed25519.PrivateKey, reached through
// fields, maps, slices, pointers or interfaces, tls.Certificate.PrivateKey
// included), when a string or []byte in it contains "PRIVATE KEY", or when
// the JSON output does.
//
// net/http/pprof's import registers its handlers on http.DefaultServeMux as
// a side effect; this package never serves DefaultServeMux.
//
// # Timeouts
//
// Every server sets ReadHeaderTimeout (5 s), ReadTimeout, WriteTimeout,
// IdleTimeout and MaxHeaderBytes. pprof's profile and trace handlers
// extend their own write deadline by the duration asked for, so long
// profiles work under the admin server's one-minute WriteTimeout.
package admin
