package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// deviceRotateKey starts an over-the-air PSK rotation (POST
// /api/v1/devices/{id}/rotate-key) and prints the pending rotation.
func deviceRotateKey(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device rotate-key", "device rotate-key ID [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return show(ctx, k, "POST", apiPath("devices", pos[0], "rotate-key"), nil, func(w io.Writer, r backend.Rotation) error {
		_, err := fmt.Fprintf(w, "rotation %s of %s: %s until %s (the device gets the new key when online; follow it with `ecowatt device events %s`)\n",
			r.ID, r.Device, r.State, r.ExpiresAt.Format(time.RFC3339), r.Device)
		return err
	})
}
