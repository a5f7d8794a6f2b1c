package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/rs/zerolog"
)

// Configs is what the API needs from the config service; *config.Service
// has it.
type Configs interface {
	Get(ctx context.Context, dev string) (config.State, error)
	Set(ctx context.Context, dev string, patch []byte, who config.Who) (config.Result, error)
	History(ctx context.Context, dev string, limit int) ([]config.Entry, error)
}

var _ Configs = (*config.Service)(nil)

// OperatorHeader names who made a change with the bootstrap admin token
// (which names no one); without it the change is attributed to
// BootstrapName. Operators' own tokens name them, and the header is then
// ignored.
const OperatorHeader = "X-Ecowatt-Operator"

// configOff answers when the server runs without a config service.
var configOff = backend.Errorf(backend.CodeUnavailable, "", "remote configuration is not enabled on this server")

// configHandler is serviceHandler for the config routes.
func configHandler(log zerolog.Logger, c Configs, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, c == nil, configOff, http.StatusOK, fn)
}

// handleConfigGet returns desired, reported, pending and last_ack.
func handleConfigGet(log zerolog.Logger, c Configs) http.Handler {
	return configHandler(log, c, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return c.Get(r.Context(), r.PathValue("id"))
	})
}

// handleConfigSet applies a partial config document: 200 with the new
// state (desired with its version, and changed=false when nothing
// changed), 400 naming the field and the reason, 404 for an unknown
// device.
func handleConfigSet(log zerolog.Logger, c Configs) http.Handler {
	return configHandler(log, c, func(w http.ResponseWriter, r *http.Request) (any, error) {
		who := config.Who{By: backend.OperatorFrom(r.Context()), Via: config.ViaHTTP}
		body, err := readBody(w, r)
		if err != nil {
			return nil, err
		}
		return c.Set(r.Context(), r.PathValue("id"), body, who)
	})
}

// handleConfigHistory returns the history, newest first; ?limit=N
// (1-config.MaxHistory, default 100).
func handleConfigHistory(log zerolog.Logger, c Configs) http.Handler {
	type response struct {
		Device  string         `json:"device"`
		History []config.Entry `json:"history"`
	}
	return configHandler(log, c, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > config.MaxHistory {
				return nil, backend.Errorf(backend.CodeInvalid, "limit", "limit must be an integer 1-%d", config.MaxHistory)
			}
			limit = n
		}
		h, err := c.History(r.Context(), r.PathValue("id"), limit)
		if err != nil {
			return nil, err
		}
		return response{Device: r.PathValue("id"), History: h}, nil
	})
}
