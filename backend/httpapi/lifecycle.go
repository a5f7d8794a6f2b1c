package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
)

// Lifecycle is what the lifecycle routes need; *backend.Service has it.
type Lifecycle interface {
	Disable(ctx context.Context, id string, who backend.Who, cancelCommands bool) (backend.Device, error)
	Enable(ctx context.Context, id string, who backend.Who) (backend.Device, error)
	Decommission(ctx context.Context, id string, who backend.Who) (backend.Device, error)
	Purge(ctx context.Context, id string, who backend.Who) error
}

var _ Lifecycle = (*backend.Service)(nil)

// lifecycleOff answers when the server runs without lifecycle support.
var lifecycleOff = backend.Errorf(backend.CodeUnavailable, "", "device lifecycle is not enabled on this server")

// lifecycleOf is d.Lifecycle, or d.Fleet when it has the methods.
func lifecycleOf(d Deps) Lifecycle {
	if d.Lifecycle != nil {
		return d.Lifecycle
	}
	l, _ := d.Fleet.(Lifecycle)
	return l
}

// lifecycleRequest is the optional body of disable and enable.
type lifecycleRequest struct {
	Reason string `json:"reason"`
}

// who is the authenticated caller (authMux; the bootstrap token may name
// someone in OperatorHeader) with the optional body's reason.
func who(w http.ResponseWriter, r *http.Request) (backend.Who, error) {
	wh := backend.Who{By: backend.OperatorFrom(r.Context())}
	var req lifecycleRequest
	if err := decodeOptional(w, r, &req); err != nil {
		return wh, err
	}
	wh.Reason = req.Reason
	return wh, nil
}

// boolQuery reads an optional true/false query parameter.
func boolQuery(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, backend.Errorf(backend.CodeInvalid, name, "%s must be true or false", name)
	}
	return b, nil
}

// handleDeviceDisable: 200 with the device (also when it was disabled
// already: nothing changes), 404 unknown, 409 decommissioned.
// ?cancel_commands=true also cancels its queued commands.
func handleDeviceDisable(log zerolog.Logger, l Lifecycle) http.Handler {
	return serviceHandler(log, l == nil, lifecycleOff, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		cancel, err := boolQuery(r, "cancel_commands")
		if err != nil {
			return nil, err
		}
		wh, err := who(w, r)
		if err != nil {
			return nil, err
		}
		return l.Disable(r.Context(), r.PathValue("id"), wh, cancel)
	})
}

// handleDeviceEnable: 200 with the device (also when it was active
// already: nothing changes), 404 unknown, 409 decommissioned.
func handleDeviceEnable(log zerolog.Logger, l Lifecycle) http.Handler {
	return serviceHandler(log, l == nil, lifecycleOff, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		wh, err := who(w, r)
		if err != nil {
			return nil, err
		}
		return l.Enable(r.Context(), r.PathValue("id"), wh)
	})
}

// handleDeviceRemove decommissions a device (200 with its archived
// record, "state":"decommissioned"; again on a decommissioned device, it
// re-runs the clean-up) or, with ?purge=true, deletes every record of it
// (200 {"id":..,"purged":true}). 404 for an unknown device.
func handleDeviceRemove(log zerolog.Logger, l Lifecycle) http.Handler {
	type purged struct {
		ID     string `json:"id"`
		Purged bool   `json:"purged"`
	}
	return serviceHandler(log, l == nil, lifecycleOff, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		purge, err := boolQuery(r, "purge")
		if err != nil {
			return nil, err
		}
		wh, err := who(w, r)
		if err != nil {
			return nil, err
		}
		id := r.PathValue("id")
		if !purge {
			return l.Decommission(r.Context(), id, wh)
		}
		if err := l.Purge(r.Context(), id, wh); err != nil {
			return nil, err
		}
		return purged{ID: id, Purged: true}, nil
	})
}
