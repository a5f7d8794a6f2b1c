package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

const token = "test-admin-token-0123456789"

type nopBus struct{}

func (nopBus) Publish(context.Context, string, []byte, byte) error { return nil }
func (nopBus) Subscribe(string, func(backend.Message)) error       { return nil }

type fixture struct {
	srv   *httptest.Server
	ready error
}

func newFixture(t *testing.T) *fixture {
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
	f := &fixture{}
	f.srv = httptest.NewServer(NewServer(Deps{
		Fleet: svc, AdminToken: token, Gatherer: reg,
		Ready:  func() error { return f.ready },
		Logger: zerolog.New(zerolog.NewTestWriter(t)),
	}))
	t.Cleanup(f.srv.Close)
	return f
}

type result struct {
	status int
	header http.Header
	body   string
}

func (f *fixture) do(t *testing.T, method, path, auth, body string) result {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}

func errorOf(t *testing.T, r result) errorDetail {
	t.Helper()
	var e errorBody
	dec := json.NewDecoder(strings.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	return e.Error
}

func TestDevicesAPI(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + token

	r := f.do(t, "POST", "/api/v1/devices", auth, `{"id":"inv-001"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	var created struct{ ID, Key string }
	if err := json.Unmarshal([]byte(r.body), &created); err != nil {
		t.Fatal(err)
	}
	if k, err := hex.DecodeString(created.Key); err != nil || len(k) != 32 || created.ID != "inv-001" {
		t.Fatalf("created = %+v", created)
	}
	f.do(t, "POST", "/api/v1/devices", auth, `{"id":"inv-000"}`)

	r = f.do(t, "GET", "/api/v1/devices/inv-001", auth, "")
	if r.status != http.StatusOK {
		t.Fatalf("GET device = %d %s", r.status, r.body)
	}
	var d map[string]any
	json.Unmarshal([]byte(r.body), &d)
	for _, k := range []string{"id", "online", "last_seen", "firmware_version", "config_version", "boot_count", "uptime_s", "created_at"} {
		if _, ok := d[k]; !ok {
			t.Errorf("device JSON lacks %q: %s", k, r.body)
		}
	}
	if strings.Contains(r.body, created.Key) {
		t.Fatal("GET device reveals the key")
	}

	r = f.do(t, "GET", "/api/v1/devices", auth, "")
	var list struct{ Devices []backend.Device }
	if err := json.Unmarshal([]byte(r.body), &list); err != nil || r.status != 200 {
		t.Fatalf("list = %d %s", r.status, r.body)
	}
	if len(list.Devices) != 2 || list.Devices[0].ID != "inv-000" || list.Devices[1].ID != "inv-001" {
		t.Fatalf("list = %+v", list.Devices)
	}

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code, field              string
	}{
		{"invalid ID", "POST", "/api/v1/devices", `{"id":"bad/id"}`, 400, "invalid", "id"},
		{"empty ID", "POST", "/api/v1/devices", `{"id":""}`, 400, "invalid", "id"},
		{"duplicate", "POST", "/api/v1/devices", `{"id":"inv-001"}`, 409, "conflict", "id"},
		{"unknown field", "POST", "/api/v1/devices", `{"id":"x","admin":true}`, 400, "invalid", "admin"},
		{"wrong type", "POST", "/api/v1/devices", `{"id":5}`, 400, "invalid", "id"},
		{"malformed JSON", "POST", "/api/v1/devices", `{"id":`, 400, "invalid", ""},
		{"empty body", "POST", "/api/v1/devices", ``, 400, "invalid", ""},
		{"trailing data", "POST", "/api/v1/devices", `{"id":"y"} {"id":"z"}`, 400, "invalid", ""},
		{"oversized body", "POST", "/api/v1/devices", `{"id":"` + strings.Repeat("a", MaxBodySize) + `"}`, 413, "too_large", ""},
		{"unknown device", "GET", "/api/v1/devices/nope", "", 404, "not_found", "id"},
		{"unknown route", "GET", "/api/v1/nothing", "", 404, "not_found", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, tc.method, tc.path, auth, tc.body)
			e := errorOf(t, r)
			if r.status != tc.status || e.Code != tc.code || e.Field != tc.field || e.Message == "" {
				t.Fatalf("%s %s = %d %s; want %d code %s field %q", tc.method, tc.path, r.status, r.body, tc.status, tc.code, tc.field)
			}
		})
	}
	r = f.do(t, "GET", "/api/v1/devices", auth, "")
	json.Unmarshal([]byte(r.body), &list)
	if len(list.Devices) != 2 {
		t.Fatalf("bad requests changed the device list: %+v", list.Devices)
	}
}

func TestAuth(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct{ name, auth string }{
		{"no token", ""},
		{"wrong token", "Bearer wrong"},
		{"token prefix", "Bearer " + token[:10]},
		{"token without scheme", token},
		{"basic auth", "Basic " + token},
	} {
		for _, route := range []struct{ method, path, body string }{
			{"GET", "/api/v1/devices", ""},
			{"POST", "/api/v1/devices", `{"id":"sneaky"}`},
			{"GET", "/api/v1/devices/sneaky", ""},
			{"GET", "/api/v1/nothing", ""},
		} {
			t.Run(tc.name+" "+route.method+" "+route.path, func(t *testing.T) {
				r := f.do(t, route.method, route.path, tc.auth, route.body)
				if r.status != http.StatusUnauthorized || errorOf(t, r).Code != "unauthorized" {
					t.Fatalf("= %d %s, want 401", r.status, r.body)
				}
				if r.header.Get("WWW-Authenticate") == "" {
					t.Error("no WWW-Authenticate header")
				}
				if strings.Contains(r.body, token) || strings.Contains(r.body, "redis") || strings.Contains(r.body, "sneaky") {
					t.Fatalf("401 body leaks: %s", r.body)
				}
			})
		}
	}
	if r := f.do(t, "GET", "/api/v1/devices/sneaky", "Bearer "+token, ""); r.status != 404 {
		t.Fatalf("unauthenticated POST created a device: %d %s", r.status, r.body)
	}
	t.Run("empty admin token refuses everything", func(t *testing.T) {
		h := NewServer(Deps{Fleet: nil, AdminToken: ""})
		req := httptest.NewRequest("GET", "/api/v1/devices", nil)
		req.Header.Set("Authorization", "Bearer ")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 401 {
			t.Fatalf("= %d, want 401", rec.Code)
		}
	})
}

func TestProbes(t *testing.T) {
	f := newFixture(t)
	if r := f.do(t, "GET", "/healthz", "", ""); r.status != 200 {
		t.Fatalf("healthz = %d", r.status)
	}
	if r := f.do(t, "GET", "/readyz", "", ""); r.status != 200 {
		t.Fatalf("readyz = %d %s", r.status, r.body)
	}
	f.ready = errors.New("listener on :1883 not up; secret internals")
	r := f.do(t, "GET", "/readyz", "", "")
	if r.status != 503 || errorOf(t, r).Code != "unavailable" || strings.Contains(r.body, "secret") {
		t.Fatalf("readyz with broker down = %d %s", r.status, r.body)
	}
	r = f.do(t, "GET", "/metrics", "", "")
	if r.status != 200 || !strings.Contains(r.body, "ecowatt_security_rejections_total") {
		t.Fatalf("metrics = %d, missing rejections counter", r.status)
	}
}

func TestInternalErrorsDoNotLeak(t *testing.T) {
	rec := httptest.NewRecorder()
	writeError(rec, zerolog.Nop(), errors.New("dial tcp 10.0.0.5:6379: connection refused"))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "10.0.0.5") {
		t.Fatalf("= %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	writeError(rec, zerolog.Nop(), &backend.Error{Code: backend.CodeUnavailable, Message: "storage unavailable", Err: errors.New("dial 10.0.0.5")})
	if rec.Code != 503 || strings.Contains(rec.Body.String(), "10.0.0.5") {
		t.Fatalf("= %d %s", rec.Code, rec.Body)
	}
}
func TestMethodNotAllowed(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + token
	r := f.do(t, "DELETE", "/api/v1/devices", auth, "")
	if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, POST" {
		t.Fatalf("DELETE /api/v1/devices = %d Allow=%q %s", r.status, r.header.Get("Allow"), r.body)
	}
	if e := errorOf(t, r); e.Code != codeMethodNotAllowed {
		t.Fatalf("code %q", e.Code)
	}
	if r := f.do(t, "GET", "/api/v1/nothing", auth, ""); r.status != http.StatusNotFound {
		t.Fatalf("GET unknown path = %d", r.status)
	}
	// Without the token the answer is 401 whatever the route: nothing about
	// the routes leaks.
	if r := f.do(t, "DELETE", "/api/v1/devices", "", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("unauthenticated DELETE = %d", r.status)
	}
}
