package meshtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/strait-mesh/strait/ztunnel/inpod"
)

// DialIn connects to addr from inside the named namespace, as a process
// running there would (no mark: a pod's own redirection applies).
func DialIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	h, err := inpod.OpenNetNS("/var/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("meshtest: %w", err)
	}
	return h.Dial(ctx, netip.Addr{}, ap, inpod.SocketOpts{})
}

// Get is an HTTP GET of http://addr/path from inside namespace ns (for
// a ztunnel's admin, readiness and metrics ports in a node namespace).
func Get(ctx context.Context, ns, addr, path string, timeout time.Duration) ([]byte, int, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		return DialIn(ctx, ns, a)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// WaitReady polls http://addr/healthz/ready inside ns until it answers
// 200, for up to 15 s.
func WaitReady(ctx context.Context, ns, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		body, code, err := Get(ctx, ns, addr, "/healthz/ready", 2*time.Second)
		if err == nil && code == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("meshtest: not ready: %d %s", code, bytes.TrimSpace(body))
			}
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitTCP waits up to 10 s until addr accepts connections from inside ns.
func WaitTCP(ctx context.Context, ns, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := DialIn(ctx, ns, addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
