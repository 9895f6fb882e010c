package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/cni/plugin"
)

// cniServer is the plugin's endpoint: HTTP+JSON on a unix socket.
type cniServer struct {
	ln  net.Listener
	srv *http.Server
}

// maxRequest bounds a plugin request body.
const maxRequest = 64 << 10

func (a *Agent) listenCNI() (*cniServer, error) {
	path := a.cfg.CNISocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("agent: cni socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("agent: cni socket: %s exists and is not a socket; not removing it", path)
		}
		os.Remove(path) // a previous agent's
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent: cni socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: cni socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+plugin.AgentPath, a.serveCNI)
	return &cniServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

func (s *cniServer) serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(sctx)
	}()
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent: cni socket: %w", err)
	}
	return nil
}

func (a *Agent) serveCNI(w http.ResponseWriter, r *http.Request) {
	var req *plugin.Request
	reply := func(code int, err error) {
		rep := plugin.Reply{}
		result := "ok"
		if err != nil {
			rep.Error = err.Error()
			result = "error"
		}
		a.m.requests.WithLabelValues(req.Command, result).Inc()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(rep)
	}
	req, err := decodeRequest(http.MaxBytesReader(w, r.Body, maxRequest))
	if err != nil {
		req.Command = "invalid"
		reply(http.StatusBadRequest, err)
		return
	}
	start := time.Now()
	err = a.cni(r.Context(), req)
	log := a.log.Info
	if err != nil {
		log = a.log.Warn
	}
	log("cni "+req.Command, zap.String("pod", podKey(req.PodNamespace, req.PodName)), zap.Duration("took", time.Since(start)), zap.Error(err))
	if err != nil {
		reply(http.StatusOK, err)
		return
	}
	reply(http.StatusOK, nil)
}

// decodeRequest reads one plugin request: strict JSON, a known command
// and a pod. It always returns a non-nil request.
func decodeRequest(body io.Reader) (*plugin.Request, error) {
	req := &plugin.Request{}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return req, fmt.Errorf("malformed request: %w", err)
	}
	if req.PodNamespace == "" || req.PodName == "" {
		return req, errors.New("malformed request: no pod namespace or name")
	}
	switch req.Command {
	case "ADD", "DEL", "CHECK":
	default:
		return req, fmt.Errorf("malformed request: unknown command %q", req.Command)
	}
	return req, nil
}
