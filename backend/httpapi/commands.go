package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/rs/zerolog"
)

// Commands is what the API needs from the command service;
// *commands.Service has it.
type Commands interface {
	Parse(body []byte) (topics.OpsCommand, error)
	Submit(ctx context.Context, dev, operator string, c topics.OpsCommand) (commands.Command, bool, error)
	Get(ctx context.Context, cid string) (commands.Command, error)
	List(ctx context.Context, dev string, limit int, before string) (commands.Page, error)
	Cancel(ctx context.Context, cid string) (commands.Command, error)
}

var _ Commands = (*commands.Service)(nil)

// commandsOff answers when the server runs without a command service.
var commandsOff = backend.Errorf(backend.CodeUnavailable, "", "commands are not enabled on this server")

// handleCommandSubmit queues a command: 201 with the command document, or
// 200 with the existing one when its request_id was seen before.
func handleCommandSubmit(log zerolog.Logger, c Commands) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c == nil {
			writeError(w, log, commandsOff)
			return
		}
		body, err := readBody(w, r)
		if err != nil {
			writeError(w, log, err)
			return
		}
		oc, err := c.Parse(body)
		if err != nil {
			writeError(w, log, err)
			return
		}
		cmd, created, err := c.Submit(r.Context(), r.PathValue("id"), backend.OperatorFrom(r.Context()), oc)
		if err != nil {
			writeError(w, log, err)
			return
		}
		w.Header().Set("Location", "/api/v1/commands/"+cmd.ID)
		st := http.StatusCreated
		if !created {
			st = http.StatusOK
		}
		encode(w, st, cmd)
	})
}

// commandsHandler is serviceHandler for the command routes.
func commandsHandler(log zerolog.Logger, c Commands, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, c == nil, commandsOff, http.StatusOK, fn)
}

// handleCommandList pages a device's history, newest first:
// ?limit=N (1-500, default 50) and ?before=CID (the previous page's next).
func handleCommandList(log zerolog.Logger, c Commands) http.Handler {
	return commandsHandler(log, c, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		limit := 0
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return nil, backend.Errorf(backend.CodeInvalid, "limit", "limit must be an integer 1-%d", commands.MaxPageSize)
			}
			limit = n
		}
		return c.List(r.Context(), r.PathValue("id"), limit, r.URL.Query().Get("before"))
	})
}

func handleCommandGet(log zerolog.Logger, c Commands) http.Handler {
	return commandsHandler(log, c, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return c.Get(r.Context(), r.PathValue("cid"))
	})
}

// handleCommandCancel cancels a queued command; 409 in any other state.
func handleCommandCancel(log zerolog.Logger, c Commands) http.Handler {
	return commandsHandler(log, c, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return c.Cancel(r.Context(), r.PathValue("cid"))
	})
}
