package fota

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestKeyFiles(t *testing.T) {
	pub, priv, err := GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "keys")
	privPath, pubPath, err := WriteKeyPair(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]fs.FileMode{privPath: 0o600, pubPath: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&^mode != 0 {
			t.Errorf("%s mode %v, want at most %v", path, st.Mode().Perm(), mode)
		}
	}
	gotPriv, err := LoadPrivateKey(privPath)
	if err != nil || !bytes.Equal(gotPriv, priv) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	gotPub, err := LoadPublicKey(pubPath)
	if err != nil || !bytes.Equal(gotPub, pub) {
		t.Fatalf("LoadPublicKey: %v", err)
	}
	// Keys from files sign and verify.
	m := mustManifest(t, mustImage(t, "1.0.0", 2048, false, 1), "1.0.0", 1024, gotPriv)
	if err := m.Verify(gotPub); err != nil {
		t.Fatal(err)
	}
	// Never overwrite.
	if _, _, err := WriteKeyPair(dir, priv); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteKeyPair: %v, want ErrExist", err)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	_, priv := testKey(9)
	privPath, pubPath, err := WriteKeyPair(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubPEM, _ := os.ReadFile(pubPath)
	privPEM, _ := os.ReadFile(privPath)
	for _, tc := range []struct {
		name string
		load func(string) error
		path string
	}{
		{"missing private", func(p string) error { _, err := LoadPrivateKey(p); return err }, filepath.Join(dir, "nope")},
		{"public as private", func(p string) error { _, err := LoadPrivateKey(p); return err }, pubPath},
		{"private as public", func(p string) error { _, err := LoadPublicKey(p); return err }, privPath},
		{"not PEM", func(p string) error { _, err := LoadPublicKey(p); return err }, write("junk", "hello")},
		{"bad DER", func(p string) error { _, err := LoadPublicKey(p); return err },
			write("bad.pub", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")},
		{"two blocks", func(p string) error { _, err := LoadPublicKey(p); return err }, write("two.pub", string(pubPEM)+string(pubPEM))},
		{"two private blocks", func(p string) error { _, err := LoadPrivateKey(p); return err }, write("two.key", string(privPEM)+string(privPEM))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.load(tc.path); err == nil {
				t.Fatal("loaded")
			}
		})
	}
	if _, _, err := WriteKeyPair(t.TempDir(), priv[:10]); err == nil {
		t.Error("WriteKeyPair accepted a short key")
	}
}
