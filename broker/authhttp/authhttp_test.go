package authhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// fakeStore is an in-memory device and operator store.
type fakeStore struct {
	devices map[string]*envelope.Keys
	ops     map[string][2]string // name -> password, role
	broken  bool                 // every lookup fails
}

func (f *fakeStore) DeviceKeys(_ context.Context, id string) (*envelope.Keys, error) {
	if f.broken {
		return nil, errors.New("redis down")
	}
	if k, ok := f.devices[id]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w: %s", broker.ErrUnknownDevice, id)
}

func (f *fakeStore) AuthenticateOperator(_ context.Context, name, password string) (topics.Role, error) {
	op, ok := f.ops[name]
	if !ok {
		return "", fmt.Errorf("%w: %s", broker.ErrUnknownOperator, name)
	}
	if op[0] != password {
		return "", errors.New("wrong password")
	}
	return topics.Role(op[1]), nil
}

func (f *fakeStore) OperatorRole(_ context.Context, name string) (topics.Role, error) {
	if f.broken {
		return "", errors.New("redis down")
	}
	op, ok := f.ops[name]
	if !ok {
		return "", fmt.Errorf("%w: %s", broker.ErrUnknownOperator, name)
	}
	return topics.Role(op[1]), nil
}

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type rig struct {
	srv   *httptest.Server
	store *fakeStore
	keys  *envelope.Keys

	mu      sync.Mutex // guards rejects and at
	rejects []broker.Rejection
	at      time.Time // the callbacks' clock; starts at now
}

// advance moves the callbacks' clock.
func (r *rig) advance(d time.Duration) {
	r.mu.Lock()
	r.at = r.at.Add(d)
	r.mu.Unlock()
}

func newRig(t *testing.T) *rig {
	t.Helper()
	k, err := envelope.DeriveKeys(make([]byte, envelope.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{keys: &k, at: now, store: &fakeStore{
		devices: map[string]*envelope.Keys{"dev-1": &k, "dev-2": &k},
		ops:     map[string][2]string{"alice": {"alice-pw", "admin"}, "victor": {"victor-pw", "viewer"}},
	}}
	h, err := Handler(Config{
		Auth: broker.Authenticator{Devices: r.store, Operators: r.store, Now: func() time.Time {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.at
		}},
		Roles:     r.store,
		Superuser: "ecowatt-backend", SuperuserPassword: "backend-secret",
		OnReject: func(rej broker.Rejection) {
			r.mu.Lock()
			r.rejects = append(r.rejects, rej)
			r.mu.Unlock()
		},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewServer(h)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *rig) token(id string, at time.Time) string { return envelope.Password(r.keys, id, at) }

// postJSON posts body and returns the status and the decoded JSON answer.
func (r *rig) postJSON(t *testing.T, path string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(r.srv.URL+path, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (r *rig) postForm(t *testing.T, path string, v url.Values) int {
	t.Helper()
	resp, err := http.PostForm(r.srv.URL+path, v)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestEMQXAuthn(t *testing.T) {
	r := newRig(t)
	cases := []struct {
		name, user, pass, cid string
		want                  string
		super                 bool
	}{
		{"device", "dev-1", r.token("dev-1", now), "dev-1", "allow", false},
		{"device token 4 min old", "dev-1", r.token("dev-1", now.Add(-4*time.Minute)), "dev-1", "allow", false},
		{"device token 6 min old", "dev-1", r.token("dev-1", now.Add(-6*time.Minute)), "dev-1", "deny", false},
		{"device token from the future", "dev-1", r.token("dev-1", now.Add(6*time.Minute)), "dev-1", "deny", false},
		{"other device's token", "dev-1", r.token("dev-2", now), "dev-1", "deny", false},
		{"client id not the device id", "dev-1", r.token("dev-1", now), "dev-2", "deny", false},
		{"operator", "alice", "alice-pw", "alice-laptop", "allow", false},
		{"operator wrong password", "alice", "nope", "alice-laptop", "deny", false},
		{"operator as a device's client id", "alice", "alice-pw", "dev-1", "deny", false},
		{"operator as a backend replica", "alice", "alice-pw", "ecowatt-r1", "deny", false},
		{"operator as another operator", "alice", "alice-pw", "victor-1", "deny", false},
		{"unknown", "mallory", "x", "m", "deny", false},
		{"no username", "", "", "c", "deny", false},
		{"backend account", "ecowatt-backend", "backend-secret", "ecowatt-r1", "allow", true},
		{"backend account wrong password", "ecowatt-backend", "guess", "ecowatt-r1", "deny", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := r.postJSON(t, "/mqtt/emqx/authn", map[string]string{"username": tc.user, "password": tc.pass, "clientid": tc.cid})
			if code != 200 || out["result"] != tc.want || out["is_superuser"] != tc.super {
				t.Fatalf("got %d %v, want 200 result=%s is_superuser=%t", code, out, tc.want, tc.super)
			}
		})
	}
	denied := 0
	for _, tc := range cases {
		if tc.want == "deny" {
			denied++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.rejects) != denied {
		t.Errorf("%d rejections reported, want %d: %+v", len(r.rejects), denied, r.rejects)
	}
}

func TestEMQXAuthz(t *testing.T) {
	r := newRig(t)
	cases := []struct {
		name, user, cid, action, topic string
		retain                         bool
		want                           string
	}{
		{"device publishes its telemetry", "dev-1", "dev-1", "publish", "ecowatt/v1/dev/dev-1/up/telemetry", false, "allow"},
		{"device publishes retained", "dev-1", "dev-1", "publish", "ecowatt/v1/dev/dev-1/up/telemetry", true, "deny"},
		{"device spoofs another", "dev-1", "dev-1", "publish", "ecowatt/v1/dev/dev-2/up/telemetry", false, "deny"},
		{"device publishes down", "dev-1", "dev-1", "publish", "ecowatt/v1/dev/dev-1/down/command", false, "deny"},
		{"device publishes ops", "dev-1", "dev-1", "publish", "ecowatt/v1/ops/dev-1/command", false, "deny"},
		{"device subscribes own down", "dev-1", "dev-1", "subscribe", "ecowatt/v1/dev/dev-1/down/#", false, "allow"},
		{"device subscribes other down", "dev-1", "dev-1", "subscribe", "ecowatt/v1/dev/dev-2/down/#", false, "deny"},
		{"device subscribes all", "dev-1", "dev-1", "subscribe", "#", false, "deny"},
		{"device subscribes shared up", "dev-1", "dev-1", "subscribe", "$share/g/ecowatt/v1/dev/+/up/#", false, "deny"},
		{"device with foreign client id", "dev-1", "dev-2", "subscribe", "ecowatt/v1/dev/dev-1/down/#", false, "deny"},
		{"admin publishes command", "alice", "a", "publish", "ecowatt/v1/ops/dev-1/command", false, "allow"},
		{"admin publishes as device", "alice", "a", "publish", "ecowatt/v1/dev/dev-1/up/birth", false, "deny"},
		{"admin reads events", "alice", "a", "subscribe", "ecowatt/v1/events/#", false, "allow"},
		{"viewer reads events shared", "victor", "v", "subscribe", "$share/ops/ecowatt/v1/events/+/command", false, "allow"},
		{"viewer publishes command", "victor", "v", "publish", "ecowatt/v1/ops/dev-1/command", false, "deny"},
		{"viewer reads device down", "victor", "v", "subscribe", "ecowatt/v1/dev/dev-1/down/#", false, "deny"},
		{"unknown account", "mallory", "m", "subscribe", "ecowatt/v1/events/#", false, "deny"},
		{"backend subscribes shared", "ecowatt-backend", "r1", "subscribe", "$share/ecowatt/ecowatt/v1/dev/+/up/#", false, "allow"},
		{"backend publishes down", "ecowatt-backend", "r1", "publish", "ecowatt/v1/dev/dev-1/down/config", false, "allow"},
		{"unknown action", "dev-1", "dev-1", "all", "ecowatt/v1/dev/dev-1/down/#", false, "deny"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := r.postJSON(t, "/mqtt/emqx/authz", map[string]any{
				"username": tc.user, "clientid": tc.cid, "action": tc.action, "topic": tc.topic, "retain": tc.retain})
			if code != 200 || out["result"] != tc.want {
				t.Fatalf("got %d %v, want result=%s", code, out, tc.want)
			}
		})
	}
}

func TestMosquittoGoAuth(t *testing.T) {
	r := newRig(t)
	cases := []struct {
		name, path string
		fields     map[string]string
		want       int
	}{
		{"device login", "/mqtt/mosquitto/user", map[string]string{"username": "dev-1", "password": r.token("dev-1", now), "clientid": "dev-1"}, 200},
		{"device expired", "/mqtt/mosquitto/user", map[string]string{"username": "dev-1", "password": r.token("dev-1", now.Add(-10*time.Minute)), "clientid": "dev-1"}, 403},
		{"device bad client id", "/mqtt/mosquitto/user", map[string]string{"username": "dev-1", "password": r.token("dev-1", now), "clientid": "x"}, 403},
		{"operator login", "/mqtt/mosquitto/user", map[string]string{"username": "alice", "password": "alice-pw", "clientid": "alice"}, 200},
		{"backend login", "/mqtt/mosquitto/user", map[string]string{"username": "ecowatt-backend", "password": "backend-secret", "clientid": "r1"}, 200},
		{"backend superuser", "/mqtt/mosquitto/superuser", map[string]string{"username": "ecowatt-backend"}, 200},
		{"device not superuser", "/mqtt/mosquitto/superuser", map[string]string{"username": "dev-1"}, 403},
		{"admin not superuser", "/mqtt/mosquitto/superuser", map[string]string{"username": "alice"}, 403},
		{"device write own up", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-1/up/birth", "acc": "2"}, 200},
		{"device write other up", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-2/up/birth", "acc": "2"}, 403},
		{"device subscribe own down", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-1/down/#", "acc": "4"}, 200},
		{"device read own down", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-1/down/config", "acc": "1"}, 200},
		{"device read other down", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-2/down/config", "acc": "1"}, 403},
		{"device readwrite own down", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-1/down/config", "acc": "3"}, 403},
		{"admin write ops", "/mqtt/mosquitto/acl", map[string]string{"username": "alice", "clientid": "a", "topic": "ecowatt/v1/ops/dev-1/config", "acc": "2"}, 200},
		{"bad acc", "/mqtt/mosquitto/acl", map[string]string{"username": "dev-1", "clientid": "dev-1", "topic": "ecowatt/v1/dev/dev-1/down/#", "acc": "9"}, 403},
	}
	for _, tc := range cases {
		for _, mode := range []string{"json", "form"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				var code int
				if mode == "json" {
					body := map[string]any{}
					for k, v := range tc.fields {
						body[k] = v
					}
					if acc, ok := tc.fields["acc"]; ok { // go-auth sends acc as a JSON number
						body["acc"] = json.Number(acc)
					}
					code, _ = r.postJSON(t, tc.path, body)
				} else {
					v := url.Values{}
					for k, f := range tc.fields {
						v.Set(k, f)
					}
					code = r.postForm(t, tc.path, v)
				}
				if code != tc.want {
					t.Fatalf("status %d, want %d", code, tc.want)
				}
			})
		}
	}
}

// TestStoreDown: a failed lookup is never an allow.
func TestStoreDown(t *testing.T) {
	r := newRig(t)
	r.store.broken = true
	if code, out := r.postJSON(t, "/mqtt/emqx/authn", map[string]string{"username": "dev-1", "password": r.token("dev-1", now), "clientid": "dev-1"}); code != 200 || out["result"] != "deny" {
		t.Errorf("emqx authn: %d %v", code, out)
	}
	if code, out := r.postJSON(t, "/mqtt/emqx/authz", map[string]string{"username": "dev-1", "clientid": "dev-1", "action": "publish", "topic": "ecowatt/v1/dev/dev-1/up/birth"}); code != 200 || out["result"] != "deny" {
		t.Errorf("emqx authz: %d %v", code, out)
	}
	if code := r.postForm(t, "/mqtt/mosquitto/acl", url.Values{"username": {"dev-1"}, "clientid": {"dev-1"}, "topic": {"ecowatt/v1/dev/dev-1/up/birth"}, "acc": {"2"}}); code != 503 {
		t.Errorf("mosquitto acl: %d, want 503", code)
	}
}

// TestBadRequests: malformed bodies are denied, wrong methods refused.
func TestBadRequests(t *testing.T) {
	r := newRig(t)
	cases := []struct {
		name, method, path, ctype, body string
		want                            int
		wantResult                      string
	}{
		{"emqx authn malformed json", "POST", "/mqtt/emqx/authn", "application/json", "{", 200, "deny"},
		{"emqx authz array", "POST", "/mqtt/emqx/authz", "application/json", "[1]", 200, "deny"},
		{"emqx authz oversized", "POST", "/mqtt/emqx/authz", "application/json", `{"topic":"` + strings.Repeat("a", 20000) + `"}`, 200, "deny"},
		{"mosquitto user malformed", "POST", "/mqtt/mosquitto/user", "application/json", "nope", 403, ""},
		{"GET refused", "GET", "/mqtt/emqx/authn", "", "", 405, ""},
		{"unknown path", "POST", "/mqtt/nope", "application/json", "{}", 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&out)
			if resp.StatusCode != tc.want || (tc.wantResult != "" && out["result"] != tc.wantResult) {
				t.Fatalf("got %d %v, want %d %q", resp.StatusCode, out, tc.want, tc.wantResult)
			}
		})
	}
}
