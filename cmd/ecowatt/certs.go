package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/certs"
)

func runCerts(_ context.Context, e env, args []string) error {
	if len(args) == 0 || args[0] != "gen" {
		return usageError{"usage: ecowatt certs gen --out DIR"}
	}
	fs := newFlags(e, "certs gen", "certs gen --out DIR")
	out := fs.String("out", "certs", "directory for ca.pem, server.pem and their keys")
	if _, err := parseFlags(fs, e, args[1:]); err != nil {
		return err
	}
	if err := certs.Generate(*out, time.Now()); err != nil {
		return fmt.Errorf("certs gen: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote a dev CA and a server certificate for localhost/127.0.0.1 to %s (keep the *-key.pem files private)\n", *out)
	return nil
}
