package keyvault

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestOpenCreatesKeyOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	v1, err := Open(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != KeySize {
		t.Fatalf("key file mode %v size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), KeySize)
	}
	psk := bytes.Repeat([]byte{7}, 32)
	blob, err := v1.Seal("dev1", psk)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := Open(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v2.Open("dev1", blob)
	if err != nil || !bytes.Equal(got, psk) {
		t.Fatalf("reopened vault: Open = %x, %v; want %x", got, err, psk)
	}
	if bytes.Contains(blob, psk) {
		t.Fatal("sealed blob contains the plain key")
	}
}

func TestOpenConcurrentCreatorsAgree(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	vs := make([]*Vault, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { vs[i], errs[i] = Open(dir, rand.Reader) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	blob, _ := vs[0].Seal("d", []byte("k"))
	for i, v := range vs {
		if _, err := v.Open("d", blob); err != nil {
			t.Fatalf("vault %d has a different master key: %v", i, err)
		}
	}
}

func TestBadInput(t *testing.T) {
	v, err := New(bytes.Repeat([]byte{1}, KeySize), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := v.Seal("dev1", []byte("secret-psk-0123456789abcdef0123"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New(bytes.Repeat([]byte{2}, KeySize), rand.Reader)
	flipped := bytes.Clone(blob)
	flipped[len(flipped)-1] ^= 1
	badVersion := bytes.Clone(blob)
	badVersion[0] = 9
	for _, tc := range []struct {
		name string
		v    *Vault
		id   string
		blob []byte
	}{
		{"moved to another device", v, "dev2", blob},
		{"other master key", other, "dev1", blob},
		{"flipped bit", v, "dev1", flipped},
		{"bad version", v, "dev1", badVersion},
		{"truncated", v, "dev1", blob[:10]},
		{"empty", v, "dev1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.v.Open(tc.id, tc.blob); !errors.Is(err, ErrOpen) {
				t.Fatalf("Open = %v, want ErrOpen", err)
			}
		})
	}
	t.Run("short master key", func(t *testing.T) {
		if _, err := New([]byte("short"), rand.Reader); err == nil {
			t.Fatal("New accepted a short key")
		}
	})
	t.Run("world-readable key file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, KeyFile), bytes.Repeat([]byte{1}, KeySize), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir, rand.Reader); err == nil {
			t.Fatal("Open accepted a 0644 key file")
		}
	})
	t.Run("wrong size key file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir, rand.Reader); err == nil {
			t.Fatal("Open accepted a 5-byte key file")
		}
	})
}
