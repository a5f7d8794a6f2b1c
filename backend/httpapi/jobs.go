package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/rs/zerolog"
)

// Jobs is what the API needs from the job engine; *jobs.Service has it.
type Jobs interface {
	Create(ctx context.Context, body []byte, by string) (jobs.Job, error)
	Get(ctx context.Context, jid string) (jobs.Job, error)
	List(ctx context.Context, limit int) ([]jobs.Job, error)
	Devices(ctx context.Context, jid, state, cursor string, limit int) (jobs.DevicePage, error)
	Pause(ctx context.Context, jid string) (jobs.Job, error)
	Resume(ctx context.Context, jid string) (jobs.Job, error)
	Cancel(ctx context.Context, jid string) (jobs.Job, error)
}

var _ Jobs = (*jobs.Service)(nil)

var jobsOff = backend.Errorf(backend.CodeUnavailable, "", "jobs are not enabled on this server")

func jobsHandler(log zerolog.Logger, j Jobs, st int, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, j == nil, jobsOff, st, fn)
}

func handleJobCreate(log zerolog.Logger, j Jobs) http.Handler {
	return jobsHandler(log, j, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		body, err := readBody(w, r)
		if err != nil {
			return nil, err
		}
		if err := jobActionAllowed(r, body); err != nil {
			return nil, err
		}
		by := backend.OperatorFrom(r.Context())
		if by == "" {
			by = "api"
		}
		return j.Create(r.Context(), body, by)
	})
}

// jobActionAllowed refuses a rotate_key job to a caller below admin: the
// route is operator-level, and rotating keys is admin's, as the per-device
// rotate-key route is. The probe decodes as leniently as Create's decoder
// matches fields (case-insensitively), so no spelling slips past it; a
// body it cannot read is left to Create's errors.
func jobActionAllowed(r *http.Request, body []byte) error {
	var probe struct {
		RotateKey json.RawMessage `json:"rotate_key"`
	}
	if json.Unmarshal(body, &probe) != nil || probe.RotateKey == nil || string(bytes.TrimSpace(probe.RotateKey)) == "null" {
		return nil
	}
	id, _ := identityFrom(r.Context())
	if id.role.AtLeast(topics.RoleAdmin) {
		return nil
	}
	return backend.Errorf(backend.CodeForbidden, "rotate_key",
		"a rotate_key job needs the role %q; %q has %q", topics.RoleAdmin, id.name, id.role)
}

func handleJobList(log zerolog.Logger, j Jobs) http.Handler {
	return jobsHandler(log, j, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		limit, err := queryInt(r, "limit")
		if err != nil {
			return nil, err
		}
		l, err := j.List(r.Context(), limit)
		return map[string]any{"jobs": l}, err
	})
}

func handleJobGet(log zerolog.Logger, j Jobs) http.Handler {
	return jobsHandler(log, j, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return j.Get(r.Context(), r.PathValue("jid"))
	})
}

func handleJobDevices(log zerolog.Logger, j Jobs) http.Handler {
	return jobsHandler(log, j, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		limit, err := queryInt(r, "limit")
		if err != nil {
			return nil, err
		}
		q := r.URL.Query()
		return j.Devices(r.Context(), r.PathValue("jid"), q.Get("state"), q.Get("cursor"), limit)
	})
}

// handleJobAction is pause, resume or cancel.
func handleJobAction(log zerolog.Logger, j Jobs, action string) http.Handler {
	return jobsHandler(log, j, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		jid := r.PathValue("jid")
		switch action {
		case "pause":
			return j.Pause(r.Context(), jid)
		case "resume":
			return j.Resume(r.Context(), jid)
		}
		return j.Cancel(r.Context(), jid)
	})
}

// queryInt reads an optional integer query parameter; absent is 0.
func queryInt(r *http.Request, name string) (int, error) {
	v := r.URL.Query()
	if !v.Has(name) {
		return 0, nil
	}
	n, err := strconv.Atoi(v.Get(name))
	if err != nil {
		return 0, backend.Errorf(backend.CodeInvalid, name, "%s must be an integer, not %q", name, v.Get(name))
	}
	if n == 0 {
		return -1, nil // an explicit 0 is out of range, not "the default"
	}
	return n, nil
}
