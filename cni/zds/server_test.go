package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
)

// rawDial connects to the agent without sending anything.
func rawDial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// TestHello: Accept checks ztunnel's hello; a bad one costs that connection
// only, and the next good client is accepted.
func TestHello(t *testing.T) {
	tests := []struct {
		name  string
		send  func(t *testing.T, uc *net.UnixConn) // nil: send nothing
		close bool                                 // close after sending
		want  []error
		text  string
	}{
		{
			name: "version 1",
			send: func(t *testing.T, uc *net.UnixConn) {
				sendRaw(t, uc, mustMarshal(t, &zdspb.ZdsHello{Version: zdspb.Version_VERSION_V1}))
			},
		},
		{
			name: "version 2",
			send: func(t *testing.T, uc *net.UnixConn) { sendRaw(t, uc, []byte{0x08, 0x02}) },
			want: []error{ErrVersionMismatch},
			text: "zds: unsupported protocol version: ztunnel announced 2",
		},
		{
			name: "version unspecified",
			send: func(t *testing.T, uc *net.UnixConn) { sendRaw(t, uc, []byte{0x08, 0x00}) },
			want: []error{ErrVersionMismatch},
			text: "ztunnel announced 0 (VERSION_UNSPECIFIED)",
		},
		{
			name: "garbage",
			send: func(t *testing.T, uc *net.UnixConn) { sendRaw(t, uc, []byte{0xff, 0xff}) },
			want: []error{ErrHandshake},
			text: "zds: bad hello: ",
		},
		{
			name: "hello with an fd",
			send: func(t *testing.T, uc *net.UnixConn) { sendRaw(t, uc, []byte{0x08, 0x01}, openNS(t, "net")) },
			want: []error{ErrHandshake, ErrUnexpectedFD},
		},
		{
			name:  "closed before the hello",
			close: true,
			want:  []error{ErrHandshake, ErrPeerClosed},
		},
		{
			name: "no hello in time",
			want: []error{ErrHandshake, os.ErrDeadlineExceeded},
			text: "timed out",
		},
	}
	srv, err := Listen(sockPath(t), ServerConfig{HelloTimeout: 100e6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			uc := rawDial(t, srv.Path())
			if tt.send != nil {
				tt.send(t, uc)
			}
			if tt.close {
				uc.Close()
			}
			before := countFDs(t)
			ac, err := srv.Accept(ctx)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Accept: %v", err)
				}
				ac.Close()
				return
			}
			if err == nil {
				ac.Close()
				t.Fatal("Accept succeeded, want a refusal")
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("Accept: %v, want it to wrap %v", err, w)
				}
			}
			if !strings.Contains(err.Error(), tt.text) || !strings.HasPrefix(err.Error(), "zds: ") {
				t.Errorf("Accept: %q, want it to contain %q", err, tt.text)
			}
			if after := countFDs(t); after != before {
				t.Errorf("fd leak: %d before Accept, %d after", before, after)
			}
			if tt.close {
				return
			}
			// The refused connection was closed by the agent.
			if _, _, _, _, err := uc.ReadMsgUnix(make([]byte, 16), nil); err == nil {
				t.Error("refused connection still open")
			}
		})
	}
	// Still accepting.
	pc, err := NewClient(ClientConfig{}).Dial(testCtx(t), srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ac, err := srv.Accept(testCtx(t))
	if err != nil {
		t.Fatalf("Accept after refusals: %v", err)
	}
	ac.Close()
}

// TestVersionMismatchSeenByZtunnel: a refused hello reaches ztunnel as the
// agent closing the connection.
func TestVersionMismatchSeenByZtunnel(t *testing.T) {
	path := sockPath(t)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx := testCtx(t)
	pc, err := NewClient(ClientConfig{}).Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _, _, _, err := uc.ReadMsgUnix(buf, nil)
	if err != nil || string(buf[:n]) != "\x08\x01" {
		t.Fatalf("hello = %x, %v; want 0801 (version 1)", buf[:n], err)
	}
	uc.Close() // what an agent of another version does
	if _, err := pc.Next(ctx); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Next: %v, want ErrPeerClosed", err)
	}
}

func TestAcceptContext(t *testing.T) {
	srv, err := Listen(sockPath(t), ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	t.Run("cancelled while waiting for a client", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		done := make(chan error, 1)
		go func() { _, err := srv.Accept(ctx); done <- err }()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Accept: %v, want context.Canceled", err)
		}
	})
	t.Run("deadline while waiting for the hello", func(t *testing.T) {
		rawDial(t, srv.Path())
		ctx, cancel := context.WithTimeout(testCtx(t), 50e6)
		defer cancel()
		_, err := srv.Accept(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrHandshake) {
			t.Fatalf("Accept: %v, want ErrHandshake and context.DeadlineExceeded", err)
		}
	})
	t.Run("usable afterwards", func(t *testing.T) {
		pc, err := NewClient(ClientConfig{}).Dial(testCtx(t), srv.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		ac, err := srv.Accept(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		ac.Close()
	})
	t.Run("closed server", func(t *testing.T) {
		srv.Close()
		if _, err := srv.Accept(testCtx(t)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	})
}

func TestListen(t *testing.T) {
	t.Run("fresh path in a new directory, mode 0600", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "strait", "ztunnel.sock")
		srv, err := Listen(path, ServerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
		}
		ents, _ := os.ReadDir(filepath.Dir(path))
		if len(ents) != 1 {
			t.Errorf("leftovers next to the socket: %v", ents)
		}
	})
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := sockPath(t)
		old, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		old.SetUnlinkOnClose(false)
		old.Close() // an agent that died: its socket file stays
		srv, err := Listen(path, ServerConfig{})
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		defer srv.Close()
		pc, err := NewClient(ClientConfig{}).Dial(testCtx(t), path)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		ac, err := srv.Accept(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		ac.Close()
	})
	refuse := []struct {
		name string
		make func(t *testing.T, path string)
		kind string
	}{
		{"regular file", func(t *testing.T, p string) { mustWrite(t, p) }, "a regular file"},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "a directory"},
		{"symlink to a socket", func(t *testing.T, p string) {
			target := filepath.Join(filepath.Dir(p), "real.sock")
			ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: target, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}, "a symlink"},
	}
	for _, tt := range refuse {
		t.Run("refuses a "+tt.name, func(t *testing.T) {
			path := sockPath(t)
			tt.make(t, path)
			before, _ := os.Lstat(path)
			srv, err := Listen(path, ServerConfig{})
			if err == nil {
				srv.Close()
				t.Fatal("Listen succeeded")
			}
			if !errors.Is(err, ErrNotSocket) || !strings.Contains(err.Error(), tt.kind) {
				t.Fatalf("Listen: %v, want ErrNotSocket naming %q", err, tt.kind)
			}
			after, _ := os.Lstat(path)
			if !os.SameFile(before, after) {
				t.Fatal("the path was touched")
			}
		})
	}
	t.Run("Close removes only its own socket", func(t *testing.T) {
		path := sockPath(t)
		first, err := Listen(path, ServerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		second, err := Listen(path, ServerConfig{}) // a new agent takes over
		if err != nil {
			t.Fatal(err)
		}
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("old agent's Close removed the new socket: %v", err)
		}
		if err := second.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket left after Close: %v", err)
		}
		if err := second.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

func mustWrite(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
}
