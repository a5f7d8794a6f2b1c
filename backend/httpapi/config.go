package httpapi

import (
	"context"
	"errors"
	"io"
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

// handleConfigGet returns desired, reported, pending and last_ack.
func handleConfigGet(log zerolog.Logger, c Configs) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c == nil {
			writeError(w, log, configOff)
			return
		}
		st, err := c.Get(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, st)
	})
}

// handleConfigSet applies a partial config document: 200 with the new
// state (desired with its version, and changed=false when nothing
// changed), 400 naming the field and the reason, 404 for an unknown
// device.
func handleConfigSet(log zerolog.Logger, c Configs) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c == nil {
			writeError(w, log, configOff)
			return
		}
		who := config.Who{By: "api", Via: config.ViaHTTP}
		if op := r.Header.Get(OperatorHeader); op != "" {
			if topics.ValidateID(op) != nil {
				writeError(w, log, backend.Errorf(backend.CodeInvalid, OperatorHeader, "%s must be 1-64 characters of A-Z a-z 0-9 _ -", OperatorHeader))
				return
			}
			who.By = op
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				writeError(w, log, backend.Errorf(backend.CodeTooLarge, "", "request body over %d bytes", MaxBodySize))
				return
			}
			writeError(w, log, backend.Errorf(backend.CodeInvalid, "", "request body unreadable"))
			return
		}
		res, err := c.Set(r.Context(), r.PathValue("id"), body, who)
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, res)
	})
}

// handleConfigHistory returns the history, newest first; ?limit=N
// (1-config.MaxHistory, default 100).
func handleConfigHistory(log zerolog.Logger, c Configs) http.Handler {
	type response struct {
		Device  string         `json:"device"`
		History []config.Entry `json:"history"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c == nil {
			writeError(w, log, configOff)
			return
		}
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > config.MaxHistory {
				writeError(w, log, backend.Errorf(backend.CodeInvalid, "limit", "limit must be an integer 1-%d", config.MaxHistory))
				return
			}
			limit = n
		}
		h, err := c.History(r.Context(), r.PathValue("id"), limit)
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, response{Device: r.PathValue("id"), History: h})
	})
}
