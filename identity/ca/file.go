package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names used by LoadOrCreateFileRoot.
const (
	RootCertFile = "root-cert.pem"
	RootKeyFile  = "root-key.pem"
)

// LoadOrCreateFileRoot loads the root CA kept in dir (root-cert.pem and
// root-key.pem), or, if neither file exists, creates dir (mode 0700) and a
// new self-signed ECDSA P-256 root for trustDomain valid for
// DefaultRootTTL. The key is written with mode 0600 through a temporary
// file renamed into place, so a crash never leaves a partial key.
//
// Loading refuses a key file readable by group or others
// (ErrKeyPermissions; fix with chmod 600), a certificate/key mismatch, a
// certificate for another trust domain, an expired root (ErrIssuerExpired)
// and a directory holding only one of the two files.
//
// It is meant for a single local process; concurrent first runs in the same
// directory may race.
func LoadOrCreateFileRoot(dir, trustDomain string) (Issuer, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil || td.Name() != trustDomain {
		return Issuer{}, fmt.Errorf("ca: file root: trust domain %q is not a bare trust domain name: %w", trustDomain, ErrInvalidConfig)
	}
	certPath := filepath.Join(dir, RootCertFile)
	keyPath := filepath.Join(dir, RootKeyFile)
	certExists, err := exists(certPath)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	switch {
	case certExists && keyExists:
		return loadFileRoot(td, certPath, keyPath)
	case certExists != keyExists:
		have, missing := certPath, keyPath
		if keyExists {
			have, missing = keyPath, certPath
		}
		return Issuer{}, fmt.Errorf("ca: file root: found %s but not %s; restore the missing file or remove both to create a new root: %w", have, missing, ErrInvalidConfig)
	}

	root, err := NewSelfSignedRoot(td, DefaultRootTTL)
	if err != nil {
		return Issuer{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(root.Key)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: marshal key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which the next run reports instead of silently replacing.
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Cert.Raw}), 0o644); err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	return root, nil
}

func loadFileRoot(td spiffeid.TrustDomain, certPath, keyPath string) (Issuer, error) {
	fi, err := os.Stat(keyPath)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Issuer{}, fmt.Errorf("ca: file root: %s is not a regular file: %w", keyPath, ErrInvalidConfig)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Issuer{}, fmt.Errorf("ca: file root: %s has mode %04o; run \"chmod 600 %s\" so only its owner can read it: %w", keyPath, perm, keyPath, ErrKeyPermissions)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %w", err)
	}
	certBlock, _ := pem.Decode(certPEM)
	if certBlock == nil || certBlock.Type != "CERTIFICATE" {
		return Issuer{}, fmt.Errorf("ca: file root: %s holds no PEM CERTIFICATE block: %w", certPath, ErrInvalidConfig)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %s: %w: %w", certPath, err, ErrInvalidConfig)
	}
	keyBlock, _ := pem.Decode(keyPEM)
	if keyBlock == nil || keyBlock.Type != "PRIVATE KEY" {
		return Issuer{}, fmt.Errorf("ca: file root: %s holds no PEM PRIVATE KEY (PKCS#8) block: %w", keyPath, ErrInvalidConfig)
	}
	key, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %s: %w: %w", keyPath, err, ErrInvalidConfig)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return Issuer{}, fmt.Errorf("ca: file root: %s: key type %T cannot sign: %w", keyPath, key, ErrInvalidConfig)
	}
	root := Issuer{Cert: cert, Key: signer}
	if err := root.validate(td); err != nil {
		return Issuer{}, fmt.Errorf("ca: file root: %s and %s: %w", certPath, keyPath, err)
	}
	if now := time.Now(); !now.Before(cert.NotAfter) {
		return Issuer{}, fmt.Errorf("ca: file root: %s expired at %s; remove %s and %s to create a new root (peers must then trust the new bundle): %w",
			certPath, cert.NotAfter.UTC().Format(time.RFC3339), certPath, keyPath, ErrIssuerExpired)
	}
	return root, nil
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// writeFileAtomic writes data to a temporary file in path's directory with
// mode perm, syncs it and renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
