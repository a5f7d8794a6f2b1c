package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/rs/zerolog"
)

// Labels serves device labels; *backend.Service has it.
type Labels interface {
	ProvisionLabeled(ctx context.Context, id string, labels map[string]string, by string) ([]byte, error)
	PatchLabels(ctx context.Context, id string, patch map[string]*string, by string) (backend.LabelChange, error)
}

var _ Labels = (*backend.Service)(nil)

var errNoLabels = backend.Errorf(backend.CodeUnavailable, "", "labels are not enabled on this server")

// handleLabelsPatch applies a JSON merge patch (RFC 7386) to a device's
// labels: {"site":"galle","model":null}. 200 with the labels after the
// patch and whether they changed; 400 naming the label (labels.KEY) and
// the reason, with nothing changed; 404 for an unknown device.
func handleLabelsPatch(log zerolog.Logger, l Labels) http.Handler {
	return serviceHandler(log, l == nil, errNoLabels, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		body, err := readBody(w, r)
		if err != nil {
			return nil, err
		}
		var raw map[string]json.RawMessage
		if err := decodeBytes(body, &raw); err != nil {
			return nil, err
		}
		if raw == nil {
			return nil, backend.Errorf(backend.CodeInvalid, "", "request body must be a JSON object of label: string or null")
		}
		patch := make(map[string]*string, len(raw))
		for k, v := range raw {
			if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
				patch[k] = nil
				continue
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, backend.Errorf(backend.CodeInvalid, "labels."+k, "label %s must be a string, or null to delete it", k)
			}
			patch[k] = &s
		}
		return l.PatchLabels(r.Context(), r.PathValue("id"), patch, backend.OperatorFrom(r.Context()))
	})
}
