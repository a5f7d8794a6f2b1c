package httpapi

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/rs/zerolog"
)

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func handleReadyz(log zerolog.Logger, f Fleet, ready func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := f.Ping(ctx); err != nil {
			writeError(w, log, err)
			return
		}
		if err := ready(); err != nil {
			writeError(w, log, &backend.Error{Code: backend.CodeUnavailable, Message: "broker not ready", Err: err})
			return
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// handleDevicesList answers the whole list, or one page when any of the
// paging parameters is given (handleDevicesPage).
func handleDevicesList(log zerolog.Logger, f Fleet, q FleetQueries) http.Handler {
	type response struct {
		Devices []backend.Device `json:"devices"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isPaged(r.URL.Query()) {
			handleDevicesPage(w, r, log, q)
			return
		}
		ds, err := f.Devices(r.Context())
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, response{Devices: ds})
	})
}

func handleDevicesCreate(log zerolog.Logger, f Fleet, l Labels) http.Handler {
	type request struct {
		ID     string                     `json:"id"`
		Labels map[string]json.RawMessage `json:"labels"`
	}
	type response struct {
		ID  string `json:"id"`
		Key string `json:"key"` // hex PSK, shown only here
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := decode(w, r, &req); err != nil {
			writeError(w, log, err)
			return
		}
		labels := make(map[string]string, len(req.Labels))
		for _, k := range slices.Sorted(maps.Keys(req.Labels)) { // the first bad one, deterministically
			v := req.Labels[k]
			var s *string
			if err := json.Unmarshal(v, &s); err != nil || s == nil {
				writeError(w, log, backend.Errorf(backend.CodeInvalid, "labels."+k, "label %s must be a string", k))
				return
			}
			labels[k] = *s
		}
		var psk []byte
		var err error
		switch {
		case len(labels) == 0:
			psk, err = f.Provision(r.Context(), req.ID)
		case l == nil:
			err = errNoLabels
		default:
			psk, err = l.ProvisionLabeled(r.Context(), req.ID, labels, backend.OperatorFrom(r.Context()))
		}
		if err != nil {
			writeError(w, log, err)
			return
		}
		w.Header().Set("Location", "/api/v1/devices/"+req.ID)
		w.Header().Set("Cache-Control", "no-store")
		encode(w, http.StatusCreated, response{ID: req.ID, Key: hex.EncodeToString(psk)})
	})
}

func handleDeviceGet(log zerolog.Logger, f Fleet, t Telemetry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := f.Device(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, deviceDoc(r.Context(), log, d, t))
	})
}

// handleNotFound answers requests no route took: 405 with an Allow header
// when the path exists under other methods, else 404.
func handleNotFound(log zerolog.Logger, mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/api/" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeError(w, log, backend.Errorf(codeMethodNotAllowed, "", "%s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
			return
		}
		writeError(w, log, backend.Errorf(backend.CodeNotFound, "", "no route %s %s", r.Method, r.URL.Path))
	})
}
