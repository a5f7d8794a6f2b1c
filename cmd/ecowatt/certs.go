package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/certs"
)

func runCertsGen(_ context.Context, e env, args []string) error {
	k := newOffline(e, "certs gen", "certs gen [--out DIR]")
	out := k.fs.String("out", "certs", "directory for ca.pem, server.pem and their keys")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	if err := certs.Generate(*out, time.Now()); err != nil {
		return fmt.Errorf("certs gen: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote a dev CA and a server certificate for localhost/127.0.0.1 to %s (keep the *-key.pem files private)\n", *out)
	return nil
}
