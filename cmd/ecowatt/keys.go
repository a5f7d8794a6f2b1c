package main

import (
	"context"
	"crypto/rand"
	"fmt"

	wire "github.com/ecowatt/ecowatt/topics/fota"
)

func runKeysGen(_ context.Context, e env, args []string) error {
	k := newOffline(e, "keys gen", "keys gen [--out DIR]")
	out := k.fs.String("out", "keys", "directory for "+wire.PrivateKeyFile+" and "+wire.PublicKeyFile)
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	_, priv, err := wire.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("keys gen: %w", err)
	}
	privPath, pubPath, err := wire.WriteKeyPair(*out, priv)
	if err != nil {
		return fmt.Errorf("keys gen: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote the Ed25519 firmware-signing key %s (keep it private; a server uses it from --data-dir)\nand its public key %s (give it to devices: devicesim --fota-pubkey)\n", privPath, pubPath)
	return nil
}
