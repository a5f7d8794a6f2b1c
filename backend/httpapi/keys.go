package httpapi

import (
	"context"
	"net/http"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
)

// Rotations serves PSK rotation (PROTOCOL.md section 15); *backend.Service
// has it.
type Rotations interface {
	StartRotation(ctx context.Context, id, by string) (backend.Rotation, error)
	Rotation(ctx context.Context, id string) (backend.Rotation, error)
}

var _ Rotations = (*backend.Service)(nil)

var errNoRotations = backend.Errorf(backend.CodeUnavailable, "", "key rotation is not enabled on this server")

// handleRotateKey starts a key rotation: 202 with the pending rotation
// (the device gets the new key now when online, else at its next birth);
// 404 for an unknown device; 409 when one is already pending, which goes
// on unchanged. No body is read. Admin only (routeAccess).
func handleRotateKey(log zerolog.Logger, rot Rotations) http.Handler {
	return serviceHandler(log, rot == nil, errNoRotations, http.StatusAccepted, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return rot.StartRotation(r.Context(), r.PathValue("id"), backend.OperatorFrom(r.Context()))
	})
}

// handleRotationGet shows a device's latest key rotation; 404 when it has
// none (or the device is unknown).
func handleRotationGet(log zerolog.Logger, rot Rotations) http.Handler {
	return serviceHandler(log, rot == nil, errNoRotations, http.StatusOK, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return rot.Rotation(r.Context(), r.PathValue("id"))
	})
}
