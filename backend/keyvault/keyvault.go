// Package keyvault encrypts device PSKs at rest. A 32-byte master key lives
// in a file in the data directory (created 0600 on first use); each PSK is
// sealed with AES-256-GCM under it, with the device ID as additional data so
// that a sealed key copied to another device fails to open. A Redis dump
// alone therefore reveals no device key.
//
// Every backend replica serving one fleet must use the same master key file.
package keyvault

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFile is the master key's file name inside the data directory.
const KeyFile = "master.key"

// KeySize is the master key size.
const KeySize = 32

// version is the first byte of every sealed blob.
const version = 1

// aadLabel domain-separates the additional data.
const aadLabel = "ecowatt-psk-v1\x00"

// ErrOpen is returned when a sealed key does not open: wrong master key,
// wrong device, or corrupt data.
var ErrOpen = errors.New("sealed key does not open")

// Vault seals and opens device keys. It is safe for concurrent use.
type Vault struct {
	aead   cipher.AEAD
	random io.Reader
}

// New returns a vault for a 32-byte master key; random supplies GCM nonces.
func New(master []byte, random io.Reader) (*Vault, error) {
	if len(master) != KeySize {
		return nil, fmt.Errorf("key vault: master key is %d bytes, want %d", len(master), KeySize)
	}
	if random == nil {
		return nil, errors.New("key vault: no random source")
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		return nil, fmt.Errorf("key vault: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("key vault: %w", err)
	}
	return &Vault{aead: aead, random: random}, nil
}

// Open loads dir/master.key, creating dir (0700) and the key (0600, from
// random) when missing. A key file readable by group or others is refused.
// Creation is atomic and exclusive, so two processes starting together end
// up with the same key.
func Open(dir string, random io.Reader) (*Vault, error) {
	master, err := loadOrCreate(dir, random)
	if err != nil {
		return nil, err
	}
	return New(master, random)
}

func loadOrCreate(dir string, random io.Reader) ([]byte, error) {
	path := filepath.Join(dir, KeyFile)
	if b, err := readKey(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	if random == nil {
		return nil, errors.New("create master key: no random source")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create master key: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(random, key); err != nil {
		return nil, fmt.Errorf("create master key: read random: %w", err)
	}
	tmp, err := os.CreateTemp(dir, KeyFile+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("create master key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create master key: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create master key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create master key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("create master key: %w", err)
	}
	// Link fails if another process won the race; then use its key.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKey(path)
		}
		return nil, fmt.Errorf("create master key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return key, nil
}

func readKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("read master key: %s has mode %v; it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("read master key: %s is %d bytes, want %d", path, len(b), KeySize)
	}
	return b, nil
}

func aad(id string) []byte { return []byte(aadLabel + id) }

// Seal encrypts psk for device id: version | 12-byte nonce | ciphertext | tag.
func (v *Vault) Seal(id string, psk []byte) ([]byte, error) {
	out := make([]byte, 1+v.aead.NonceSize(), 1+v.aead.NonceSize()+len(psk)+v.aead.Overhead())
	out[0] = version
	if _, err := io.ReadFull(v.random, out[1:]); err != nil {
		return nil, fmt.Errorf("seal key: read random: %w", err)
	}
	return v.aead.Seal(out, out[1:], psk, aad(id)), nil
}

// Open decrypts a blob made by Seal for the same device id.
func (v *Vault) Open(id string, blob []byte) ([]byte, error) {
	ns := v.aead.NonceSize()
	if len(blob) < 1+ns+v.aead.Overhead() || blob[0] != version {
		return nil, fmt.Errorf("open key: %w: malformed", ErrOpen)
	}
	psk, err := v.aead.Open(nil, blob[1:1+ns], blob[1+ns:], aad(id))
	if err != nil {
		return nil, fmt.Errorf("open key: %w", ErrOpen)
	}
	return psk, nil
}
