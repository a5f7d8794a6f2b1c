// Package certs makes development TLS material for the broker's MQTTS
// listener: a private CA and a server certificate for localhost, 127.0.0.1
// and ::1, all ECDSA P-256. It is for development and tests; production
// certificates come from a real CA. See README.md.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names written by Generate.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
)

// Validity periods, counted from the now passed to Generate.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 825 * 24 * time.Hour // the longest that Apple clients accept
	backdate       = time.Hour            // tolerate small clock skew
)

// Generate writes a dev CA (ca.pem, ca-key.pem) and a server certificate
// signed by it (server.pem, server-key.pem) for localhost, 127.0.0.1 and ::1
// into dir, creating dir if needed. Key files are written with mode 0600.
// Existing files are replaced.
func Generate(dir string, now time.Time) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("certs: create %s: %w", dir, err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"EcoWatt dev"}, CommonName: "EcoWatt dev CA"},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certs: sign ca: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("certs: parse ca: %w", err)
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: server key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: mustSerial(),
		Subject:      pkix.Name{Organization: []string{"EcoWatt dev"}, CommonName: "localhost"},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ServerValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certs: sign server: %w", err)
	}

	files := []struct {
		name  string
		block func() (*pem.Block, error)
		mode  os.FileMode
	}{
		{CAFile, certBlock(caDER), 0o644},
		{CAKeyFile, keyBlock(caKey), 0o600},
		{ServerFile, certBlock(srvDER), 0o644},
		{ServerKeyFile, keyBlock(srvKey), 0o600},
	}
	for _, f := range files {
		b, err := f.block()
		if err != nil {
			return fmt.Errorf("certs: encode %s: %w", f.name, err)
		}
		if err := writeFile(filepath.Join(dir, f.name), pem.EncodeToMemory(b), f.mode); err != nil {
			return err
		}
	}
	return nil
}

func certBlock(der []byte) func() (*pem.Block, error) {
	return func() (*pem.Block, error) { return &pem.Block{Type: "CERTIFICATE", Bytes: der}, nil }
}

func keyBlock(k *ecdsa.PrivateKey) func() (*pem.Block, error) {
	return func() (*pem.Block, error) {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		return &pem.Block{Type: "PRIVATE KEY", Bytes: der}, nil
	}
}

// mustSerial returns a random 128-bit serial number.
func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil { // crypto/rand does not fail on supported platforms
		panic(fmt.Sprintf("certs: random serial: %v", err))
	}
	return n
}

// writeFile writes data to path atomically with the given mode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("certs: chmod %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("certs: sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("certs: close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("certs: rename %s: %w", path, err)
	}
	return nil
}
