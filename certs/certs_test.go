package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := Generate(dir, now); err != nil {
		t.Fatal(err)
	}

	t.Run("modes", func(t *testing.T) {
		for name, want := range map[string]os.FileMode{
			CAFile: 0o644, CAKeyFile: 0o600, ServerFile: 0o644, ServerKeyFile: 0o600,
		} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s mode = %v, want %v", name, got, want)
			}
		}
		left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
		if len(left) > 0 {
			t.Errorf("temp files left: %v", left)
		}
	})

	ca := readCert(t, filepath.Join(dir, CAFile))
	srv := readCert(t, filepath.Join(dir, ServerFile))

	t.Run("ca", func(t *testing.T) {
		if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Error("ca.pem is not a CA certificate")
		}
		checkP256(t, ca.PublicKey)
	})

	t.Run("server verifies for every loopback name", func(t *testing.T) {
		checkP256(t, srv.PublicKey)
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
			_, err := srv.Verify(x509.VerifyOptions{
				DNSName: host, Roots: pool, CurrentTime: now,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				t.Errorf("%s: %v", host, err)
			}
		}
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: pool, CurrentTime: now}); err == nil {
			t.Error("server cert verified for example.com")
		}
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool, CurrentTime: now.Add(ServerValidity + time.Hour)}); err == nil {
			t.Error("server cert valid after its validity")
		}
	})

	t.Run("tls handshake", func(t *testing.T) {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerFile), filepath.Join(dir, ServerKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)); err != nil {
			t.Fatalf("ca key pair: %v", err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				err = c.(*tls.Conn).Handshake()
				c.Close()
			}
			done <- err
		}()
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("regenerate replaces", func(t *testing.T) {
		if err := Generate(dir, now); err != nil {
			t.Fatal(err)
		}
		if readCert(t, filepath.Join(dir, CAFile)).SerialNumber.Cmp(ca.SerialNumber) == 0 {
			t.Error("second Generate kept the old CA")
		}
	})
}

func TestGenerateBadDir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Generate(filepath.Join(f, "sub"), time.Now()); err == nil {
		t.Fatal("Generate under a regular file succeeded")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkP256(t *testing.T, pub any) {
	t.Helper()
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", pub)
	}
}
