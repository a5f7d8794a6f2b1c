package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/telemetry"
)

// Telemetry is what the API needs from the telemetry store.
type Telemetry interface {
	Query(ctx context.Context, dev string, from, to time.Time, names []string) (telemetry.Series, error)
	Latest(ctx context.Context, dev string) (telemetry.Latest, error)
}

var _ Telemetry = (*telemetry.Store)(nil)

// handleTelemetry serves GET /api/v1/devices/{id}/telemetry?from=&to=&registers=
// with RFC 3339 times (or Unix milliseconds) and a comma list of names.
func handleTelemetry(log zerolog.Logger, f Fleet, t Telemetry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t == nil {
			writeError(w, log, backend.Errorf(backend.CodeUnavailable, "", "telemetry is not enabled"))
			return
		}
		id := r.PathValue("id")
		if _, err := f.Device(r.Context(), id); err != nil {
			writeError(w, log, err)
			return
		}
		q := r.URL.Query()
		from, err := parseTime(q.Get("from"), "from")
		if err != nil {
			writeError(w, log, err)
			return
		}
		to, err := parseTime(q.Get("to"), "to")
		if err != nil {
			writeError(w, log, err)
			return
		}
		var names []string
		if s := q.Get("registers"); s != "" {
			names = strings.Split(s, ",")
		}
		series, err := t.Query(r.Context(), id, from, to, names)
		if err != nil {
			writeError(w, log, err)
			return
		}
		encode(w, http.StatusOK, series)
	})
}

// parseTime reads an RFC 3339 time or Unix milliseconds; empty is zero.
func parseTime(s, field string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	var ms int64
	if err := json.Unmarshal([]byte(s), &ms); err == nil {
		return time.UnixMilli(ms), nil
	}
	return time.Time{}, backend.Errorf(backend.CodeInvalid, field, "%s must be an RFC 3339 time or Unix milliseconds", field)
}

// deviceDoc is the device document with the feature fields merged in.
func deviceDoc(ctx context.Context, log zerolog.Logger, d backend.Device, t Telemetry) any {
	if t == nil {
		return d
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return d
	}
	doc := map[string]any{}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return d
	}
	latest, err := t.Latest(ctx, d.ID)
	if err != nil {
		log.Warn().Err(err).Str("device", d.ID).Msg("latest telemetry")
		return doc
	}
	doc["latest"] = latest.Values
	doc["last_upload"] = latest.LastUpload
	doc["telemetry_counters"] = latest.Counters
	return doc
}
