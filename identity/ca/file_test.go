package ca_test

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strait-mesh/strait/identity/ca"
)

func TestLoadOrCreateFileRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	created, err := ca.LoadOrCreateFileRoot(dir, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{ca.RootKeyFile: 0o600, ca.RootCertFile: 0o644, ".": 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", name, got, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries (temporary files left behind?)", len(entries))
	}
	if _, err := ca.New(ca.Config{TrustDomain: td, Root: created}); err != nil {
		t.Errorf("created root unusable: %v", err)
	}

	loaded, err := ca.LoadOrCreateFileRoot(dir, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(created.Cert) {
		t.Error("second call created a new root instead of loading the stored one")
	}
	if !created.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(loaded.Key.Public()) {
		t.Error("loaded key differs")
	}
}

func TestLoadOrCreateFileRootRefusals(t *testing.T) {
	setup := func(t *testing.T) string {
		dir := t.TempDir()
		if _, err := ca.LoadOrCreateFileRoot(dir, "cluster.local"); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		td      string
		want    error
		msg     string
	}{
		{name: "key readable by others (0644)", prepare: func(t *testing.T, dir string) {
			chmod(t, filepath.Join(dir, ca.RootKeyFile), 0o644)
		}, want: ca.ErrKeyPermissions, msg: `has mode 0644; run "chmod 600 `},
		{name: "key readable by group (0640)", prepare: func(t *testing.T, dir string) {
			chmod(t, filepath.Join(dir, ca.RootKeyFile), 0o640)
		}, want: ca.ErrKeyPermissions, msg: "chmod 600"},
		{name: "other trust domain", td: "other.domain", want: ca.ErrInvalidConfig, msg: `trust domain "cluster.local", not "other.domain"`},
		{name: "key without certificate", prepare: func(t *testing.T, dir string) {
			remove(t, filepath.Join(dir, ca.RootCertFile))
		}, want: ca.ErrInvalidConfig, msg: "restore the missing file or remove both"},
		{name: "certificate without key", prepare: func(t *testing.T, dir string) {
			remove(t, filepath.Join(dir, ca.RootKeyFile))
		}, want: ca.ErrInvalidConfig, msg: "root-cert.pem but not"},
		{name: "garbage certificate", prepare: func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, ca.RootCertFile), "not pem", 0o644)
		}, want: ca.ErrInvalidConfig, msg: "no PEM CERTIFICATE block"},
		{name: "garbage key", prepare: func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, ca.RootKeyFile), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0o600)
		}, want: ca.ErrInvalidConfig},
		{name: "key from another root", prepare: func(t *testing.T, dir string) {
			other := t.TempDir()
			if _, err := ca.LoadOrCreateFileRoot(other, "cluster.local"); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(other, ca.RootKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, ca.RootKeyFile), string(data), 0o600)
		}, want: ca.ErrInvalidConfig, msg: "does not match"},
		{name: "expired root", prepare: func(t *testing.T, dir string) {
			old, err := ca.NewSelfSignedRoot(td, time.Hour, ca.WithIssuerNow(func() time.Time { return time.Now().Add(-2 * time.Hour) }))
			if err != nil {
				t.Fatal(err)
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(old.Key)
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, ca.RootKeyFile), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600)
			write(t, filepath.Join(dir, ca.RootCertFile), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Cert.Raw})), 0o644)
		}, want: ca.ErrIssuerExpired, msg: "expired at"},
		{name: "trust domain given as URI", td: "spiffe://cluster.local", want: ca.ErrInvalidConfig, msg: "bare trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := setup(t)
			if tt.prepare != nil {
				tt.prepare(t, dir)
			}
			tdName := tt.td
			if tdName == "" {
				tdName = "cluster.local"
			}
			_, err := ca.LoadOrCreateFileRoot(dir, tdName)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "ca: file root: ") {
				t.Fatalf("LoadOrCreateFileRoot = %v; want %v mentioning %q", err, tt.want, tt.msg)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}
