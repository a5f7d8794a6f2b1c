package httpapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// newEventFixture is a server on a real backend whose service the test
// can emit events through.
func newEventFixture(t *testing.T) (*httptest.Server, *backend.Service) {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	svc, err := backend.New(backend.Config{Redis: rdb, Prefix: prefix, Vault: vault, Bus: nopBus{},
		Logger: zerolog.Nop(), Registerer: reg, BcryptCost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewServer(Deps{Fleet: svc, AdminToken: token, Gatherer: reg,
		KeepAlive: 50 * time.Millisecond, Logger: zerolog.New(zerolog.NewTestWriter(t))}))
	t.Cleanup(srv.Close)
	return srv, svc
}

func TestEventStreamAuth(t *testing.T) {
	srv, _ := newEventFixture(t)
	cases := []struct {
		name, query, auth string
	}{
		{"no token", "", ""},
		{"wrong bearer", "", "Bearer nope"},
		{"wrong scheme", "", "Basic " + token},
		{"wrong query token", "?token=nope", ""},
		{"empty query token", "?token=", ""},
		{"query token does not override a wrong header", "?token=" + token, "Bearer nope"},
		{"wrong token with a filter", "?token=nope&device=d1&kind=config", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+"/api/v1/events"+tc.query, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 401 {
				t.Fatalf("= %d %s, want 401", resp.StatusCode, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			body := string(b)
			for _, leak := range []string{token, "nope", "events", "device", "/api", "d1"} {
				if strings.Contains(body, leak) {
					t.Errorf("401 body leaks %q: %s", leak, body)
				}
			}
		})
	}
}

func TestDeviceEventsAuth(t *testing.T) {
	srv, _ := newEventFixture(t)
	for _, q := range []string{"", "?token=" + token} {
		resp, err := http.Get(srv.URL + "/api/v1/devices/d1/events" + q)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || strings.Contains(string(b), token) {
			t.Fatalf("GET events%s = %d %s, want 401 (?token= is for the stream only)", q, resp.StatusCode, b)
		}
	}
}

// sseClient reads one event stream.
type sseClient struct {
	resp   *http.Response
	lines  chan string
	cancel context.CancelFunc
}

func openStream(t *testing.T, url string, header bool) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if header {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("GET %s = %d %s", url, resp.StatusCode, b)
	}
	c := &sseClient{resp: resp, lines: make(chan string, 100), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return c
}

// next returns the next data event, skipping comments and other fields.
func (c *sseClient) next(t *testing.T) backend.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatal("stream ended")
			}
			if d, ok := strings.CutPrefix(l, "data: "); ok {
				var ev backend.Event
				if err := json.Unmarshal([]byte(d), &ev); err != nil {
					t.Fatalf("bad event %q: %v", d, err)
				}
				return ev
			}
		case <-timeout:
			t.Fatal("no event within 5 s")
		}
	}
}

// waitLine waits for a line with the prefix.
func (c *sseClient) waitLine(t *testing.T, prefix string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("stream ended before %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q line within 5 s", prefix)
		}
	}
}

func TestEventStream(t *testing.T) {
	srv, svc := newEventFixture(t)
	ctx := context.Background()
	for _, id := range []string{"d1", "d2"} {
		if _, err := svc.Provision(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	all := openStream(t, srv.URL+"/api/v1/events", true)
	d2 := openStream(t, srv.URL+"/api/v1/events?device=d2&token="+token, false)
	cfg := openStream(t, srv.URL+"/api/v1/events?kind=config", true)
	if got := all.resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Fatalf("Content-Type %q", got)
	}
	for _, c := range []*sseClient{all, d2, cfg} {
		c.waitLine(t, "retry:") // subscribed before anything is emitted
	}

	emit := func(dev, kind string, data any) {
		if err := svc.Emit(ctx, dev, kind, data); err != nil {
			t.Fatal(err)
		}
	}
	emit("d1", topics.EventCommand, map[string]string{"state": "queued"})
	emit("d2", topics.EventConfig, map[string]int{"version": 2})
	emit("d1", topics.EventConfig, map[string]int{"version": 7})

	t.Run("unfiltered", func(t *testing.T) {
		for _, want := range []string{"d1/command", "d2/config", "d1/config"} {
			ev := all.next(t)
			if got := ev.Device + "/" + ev.Kind; got != want || ev.ID == "" || ev.At.IsZero() {
				t.Fatalf("event %+v, want %s with id and time", ev, want)
			}
		}
	})
	t.Run("device filter and query token", func(t *testing.T) {
		ev := d2.next(t)
		if ev.Device != "d2" || string(ev.Data) != `{"version":2}` {
			t.Fatalf("got %+v", ev)
		}
	})
	t.Run("kind filter", func(t *testing.T) {
		for _, want := range []string{"d2", "d1"} {
			if ev := cfg.next(t); ev.Device != want || ev.Kind != "config" {
				t.Fatalf("got %+v, want %s config", ev, want)
			}
		}
	})
	t.Run("keep-alive", func(t *testing.T) {
		d2.waitLine(t, ": keep-alive")
	})
	t.Run("audit timeline", func(t *testing.T) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/devices/d1/events?n=10&kind=config", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc struct{ Events []backend.Event }
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 {
			t.Fatalf("= %d %v", resp.StatusCode, err)
		}
		if len(doc.Events) != 1 || string(doc.Events[0].Data) != `{"version":7}` {
			t.Fatalf("timeline %+v", doc.Events)
		}
	})
}

func TestEventStreamBadFilters(t *testing.T) {
	srv, _ := newEventFixture(t)
	cases := []struct{ name, path, field string }{
		{"bad device", "/api/v1/events?device=a/b", "device"},
		{"bad kind", "/api/v1/events?kind=telemetry", "kind"},
		{"bad n", "/api/v1/devices/d1/events?n=0", "n"},
		{"huge n", "/api/v1/devices/d1/events?n=100000", "n"},
		{"timeline bad kind", "/api/v1/devices/d1/events?kind=x", "kind"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body errorBody
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != 400 || body.Error.Field != tc.field {
				t.Fatalf("= %d %+v, want 400 on field %s", resp.StatusCode, body, tc.field)
			}
		})
	}
}

// countingLog wraps an EventLog and reports unsubscriptions.
type countingLog struct {
	EventLog
	cancelled chan struct{}
}

func (c countingLog) SubscribeEvents(f backend.EventFilter) (<-chan backend.Event, func()) {
	ch, cancel := c.EventLog.SubscribeEvents(f)
	return ch, func() { cancel(); c.cancelled <- struct{}{} }
}

// TestEventStreamEndsOnDisconnect: the handler unsubscribes and returns
// when the client goes away, and when the server's base context ends.
func TestEventStreamEndsOnDisconnect(t *testing.T) {
	_, svc := newEventFixture(t)
	log := countingLog{EventLog: svc, cancelled: make(chan struct{}, 1)}
	srv := httptest.NewServer(NewServer(Deps{Fleet: svc, Events: log, AdminToken: token, Logger: zerolog.Nop()}))
	defer srv.Close()
	c := openStream(t, srv.URL+"/api/v1/events", true)
	c.waitLine(t, "retry:")
	c.cancel()
	select {
	case <-log.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("handler still subscribed 5 s after the client left")
	}
}
