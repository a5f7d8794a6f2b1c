package fota

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Key file names written by WriteKeyPair.
const (
	PrivateKeyFile = "firmware-signing.key" // PEM "PRIVATE KEY", PKCS#8, mode 0600
	PublicKeyFile  = "firmware-signing.pub" // PEM "PUBLIC KEY", PKIX (SubjectPublicKeyInfo), mode 0644
)

// GenerateKey makes a new Ed25519 firmware-signing key pair from random
// (crypto/rand.Reader in production).
func GenerateKey(random io.Reader) (ed25519.PublicKey, ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return nil, nil, fmt.Errorf("generate firmware key: %w", err)
	}
	return pub, priv, nil
}

// WriteKeyPair writes priv and its public key to dir as PrivateKeyFile
// (0600) and PublicKeyFile (0644), creating dir (0700) if needed. It never
// overwrites an existing key file (the error then wraps fs.ErrExist). It
// returns the two paths.
func WriteKeyPair(dir string, priv ed25519.PrivateKey) (privPath, pubPath string, err error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", "", fmt.Errorf("write key pair: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	privPath = filepath.Join(dir, PrivateKeyFile)
	pubPath = filepath.Join(dir, PublicKeyFile)
	if _, err := os.Stat(pubPath); err == nil {
		return "", "", fmt.Errorf("write key pair: %s: %w", pubPath, os.ErrExist)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	return privPath, pubPath, nil
}

// writeNew creates path exclusively with mode, writes data and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errors.Join(err, os.Remove(path))
	}
	return nil
}

// LoadPrivateKey reads a PEM PKCS#8 Ed25519 private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("load private key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load private key %s: %T is not an Ed25519 key", path, k)
	}
	return priv, nil
}

// LoadPublicKey reads a PEM PKIX Ed25519 public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	der, err := readPEM(path, "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("load public key %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("load public key %s: %T is not an Ed25519 key", path, k)
	}
	return pub, nil
}

// readPEM returns the DER bytes of the one PEM block of type typ in path.
func readPEM(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s: no PEM %q block", path, typ)
	}
	if len(rest) > 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, fmt.Errorf("%s: more than one PEM block", path)
		}
	}
	return blk.Bytes, nil
}
