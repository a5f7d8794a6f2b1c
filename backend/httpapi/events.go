package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/rs/zerolog"
)

// EventLog is what the event routes need from the backend; *backend.Service
// has it.
type EventLog interface {
	SubscribeEvents(f backend.EventFilter) (<-chan backend.Event, func())
	Events(ctx context.Context, dev string, count int64) ([]backend.Event, error)
}

var _ EventLog = (*backend.Service)(nil)

// Limits of the event routes.
const (
	// DefaultKeepAlive is the interval of SSE keep-alive comments.
	DefaultKeepAlive = 15 * time.Second
	// MaxEventStreams bounds concurrent SSE clients per server.
	MaxEventStreams = 256
	// MaxAuditEvents bounds ?n= of the audit timeline route.
	MaxAuditEvents = 500
	// sseWriteTimeout bounds one write to a stream client; a client that
	// does not read for this long is disconnected.
	sseWriteTimeout = 10 * time.Second
)

// eventKinds are the kinds ?kind= accepts.
var eventKinds = []string{topics.EventPresence, topics.EventConfig, topics.EventCommand, topics.EventFOTA, topics.EventSecurity, topics.EventLabels, topics.EventKey}

// eventStreamPath is the live event stream, the one route that takes
// ?token=.
const eventStreamPath = "/api/v1/events"

// tokenFromQuery lets clients that cannot set headers (EventSource, curl
// in a pinch) pass their token as ?token= on path only. The token is moved
// into the Authorization header and removed from the URL before anything
// logs it.
func tokenFromQuery(path string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		if tok := q.Get("token"); tok != "" || q.Has("token") {
			r = r.Clone(r.Context())
			if r.Header.Get("Authorization") == "" {
				r.Header.Set("Authorization", "Bearer "+tok)
			}
			q.Del("token")
			r.URL.RawQuery = q.Encode()
		}
		next.ServeHTTP(w, r)
	})
}

// handleEventStream streams audit events as Server-Sent Events, filtered
// by ?device= and ?kind=. Each event is one "message" whose data is the
// event's JSON and whose id is its audit stream entry (when it has one).
// A comment is sent every keepAlive so that proxies keep the connection;
// the stream ends when the client goes away or the server shuts down.
func handleEventStream(log zerolog.Logger, ev EventLog, keepAlive time.Duration) http.Handler {
	var streams atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ev == nil {
			writeError(w, log, backend.Errorf(backend.CodeUnavailable, "", "event stream not configured"))
			return
		}
		f, err := eventFilter(r)
		if err != nil {
			writeError(w, log, err)
			return
		}
		if streams.Add(1) > MaxEventStreams {
			streams.Add(-1)
			writeError(w, log, backend.Errorf(backend.CodeUnavailable, "", "too many event streams (at most %d)", MaxEventStreams))
			return
		}
		defer streams.Add(-1)

		ch, cancel := ev.SubscribeEvents(f)
		defer cancel()
		rc := http.NewResponseController(w)
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		send := func(b []byte) bool {
			rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
			if _, err := w.Write(b); err != nil {
				return false
			}
			return rc.Flush() == nil
		}
		if !send([]byte("retry: 3000\n: ecowatt event stream\n\n")) {
			return
		}
		tick := time.NewTicker(keepAlive)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				if !send([]byte(": keep-alive\n\n")) {
					return
				}
			case e, ok := <-ch:
				if !ok {
					return
				}
				b, err := sseMessage(e)
				if err != nil {
					log.Error().Err(err).Str("device", e.Device).Msg("encode event")
					continue
				}
				if !send(b) {
					return
				}
			}
		}
	})
}

// sseMessage formats one event. JSON has no raw newlines, so the data is
// a single line.
func sseMessage(e backend.Event) ([]byte, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("sse message: %w", err)
	}
	var b []byte
	if e.ID != "" {
		b = append(b, "id: "+e.Device+"/"+e.ID+"\n"...)
	}
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, "\n\n"...), nil
}

func eventFilter(r *http.Request) (backend.EventFilter, error) {
	q := r.URL.Query()
	f := backend.EventFilter{Device: q.Get("device"), Kind: q.Get("kind")}
	if f.Device != "" && topics.ValidateID(f.Device) != nil {
		return f, backend.Errorf(backend.CodeInvalid, "device", "device must be 1-64 characters of A-Z a-z 0-9 _ -")
	}
	if f.Kind != "" && !slices.Contains(eventKinds, f.Kind) {
		return f, backend.Errorf(backend.CodeInvalid, "kind", "kind must be one of %v", eventKinds)
	}
	return f, nil
}

// handleDeviceEvents returns a device's audit timeline, newest first:
// ?n= events (default 100, at most MaxAuditEvents), optionally one ?kind=.
func handleDeviceEvents(log zerolog.Logger, ev EventLog) http.Handler {
	type response struct {
		Events []backend.Event `json:"events"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ev == nil {
			writeError(w, log, backend.Errorf(backend.CodeUnavailable, "", "audit log not configured"))
			return
		}
		n := int64(100)
		if s := r.URL.Query().Get("n"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 1 || v > MaxAuditEvents {
				writeError(w, log, backend.Errorf(backend.CodeInvalid, "n", "n must be a number from 1 to %d", MaxAuditEvents))
				return
			}
			n = v
		}
		kind := r.URL.Query().Get("kind")
		if kind != "" && !slices.Contains(eventKinds, kind) {
			writeError(w, log, backend.Errorf(backend.CodeInvalid, "kind", "kind must be one of %v", eventKinds))
			return
		}
		evs, err := ev.Events(r.Context(), r.PathValue("id"), n)
		if err != nil {
			writeError(w, log, err)
			return
		}
		if kind != "" {
			evs = slices.DeleteFunc(evs, func(e backend.Event) bool { return e.Kind != kind })
		}
		encode(w, http.StatusOK, response{Events: evs})
	})
}
