package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/topics"
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

// OperatorHeader names who made a change through the API (for the
// history); the admin token is the authentication, the header only
// attributes. Without it the change is attributed to "api".
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
		who := config.Who{By: "api", Via: config.ViaHTTP}
		if op := r.Header.Get(OperatorHeader); op != "" {
			if topics.ValidateID(op) != nil {
				return nil, backend.Errorf(backend.CodeInvalid, OperatorHeader, "%s must be 1-64 characters of A-Z a-z 0-9 _ -", OperatorHeader)
			}
			who.By = op
		}
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
