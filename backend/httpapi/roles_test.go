package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// roleFixture is a server with one named operator of each role, a
// bootstrap admin token, a revoked token and a provisioned device.
type roleFixture struct {
	srv    *httptest.Server
	h      http.Handler
	svc    *backend.Service
	rdb    redis.UniversalClient
	prefix string
	tokens map[string]string // caller -> Authorization header value ("" for none)
}

// Callers of the role matrix; the named ones are operator accounts.
const (
	callerViewer    = "vera"  // viewer
	callerOperator  = "otto"  // operator
	callerAdmin     = "ada"   // admin
	callerBootstrap = "boot"  // the --admin-token
	callerNone      = "none"  // no Authorization header
	callerRevoked   = "revok" // a viewer's revoked token
	callerGarbage   = "junk"  // a made-up token
	victim          = "victim"
)

var callerRoles = map[string]topics.Role{
	callerViewer: topics.RoleViewer, callerOperator: topics.RoleOperator, callerAdmin: topics.RoleAdmin,
	callerBootstrap: topics.RoleAdmin,
}

func newRoleFixture(t *testing.T) *roleFixture {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A fixed clock: a token's last_used is written at its first use only.
	now := func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	reg := prometheus.NewRegistry()
	svc, err := backend.New(backend.Config{Redis: rdb, Prefix: prefix, Vault: vault, Bus: nopBus{},
		Logger: zerolog.Nop(), Registerer: reg, BcryptCost: bcrypt.MinCost, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := store.NewKeys(prefix)
	cfgs, err := config.New(config.Config{Redis: rdb, Keys: keys, Fleet: svc, Logger: zerolog.Nop(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f := &roleFixture{svc: svc, rdb: rdb, prefix: prefix, tokens: map[string]string{callerNone: "", callerBootstrap: "Bearer " + token, callerGarbage: "Bearer ewt_notarealtoken"}}
	for name, role := range map[string]topics.Role{callerViewer: topics.RoleViewer, callerOperator: topics.RoleOperator, callerAdmin: topics.RoleAdmin, victim: topics.RoleViewer} {
		if _, err := svc.CreateOperator(ctx, name, "pw-"+name, role); err != nil {
			t.Fatal(err)
		}
		_, secret, err := svc.CreateToken(ctx, name, "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		f.tokens[name] = "Bearer " + secret
	}
	tk, secret, err := svc.CreateToken(ctx, callerViewer, "leaked", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.RevokeToken(ctx, callerViewer, tk.ID); err != nil {
		t.Fatal(err)
	}
	f.tokens[callerRevoked] = "Bearer " + secret
	if _, err := svc.Provision(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	f.h = NewServer(Deps{Fleet: svc, AdminToken: token, Gatherer: reg, Configs: cfgs,
		Logger: zerolog.New(zerolog.NewTestWriter(t))})
	f.srv = httptest.NewServer(f.h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *roleFixture) do(t *testing.T, caller, method, path, body string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := f.tokens[caller]; !ok {
		t.Fatalf("no caller %q", caller)
	} else if a != "" {
		req.Header.Set("Authorization", a)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b []byte
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ = io.ReadAll(resp.Body)
	}
	return result{resp.StatusCode, resp.Header, string(b)}
}

// routeSample is a concrete request for a registered pattern.
func routeSample(pattern string) (method, path string, ok bool) {
	method, path, ok = strings.Cut(pattern, " ")
	if !ok {
		return "", "", false
	}
	path = strings.NewReplacer("{id}", "dev-1", "{cid}", "c-none", "{version}", "9.9.9", "{rid}", "r-none",
		"{name}", victim, "{tid}", "0000", "{$}", "").Replace(path)
	if strings.HasSuffix(path, "/static/") {
		path += "app.js"
	}
	return method, path, true
}

// registeredAPI returns every pattern routes.go registers.
func registeredAPI(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range parsePatterns(t, "routes.go", true) {
		out = append(out, p.pattern)
	}
	if len(out) < 30 {
		t.Fatalf("only %d patterns parsed from routes.go", len(out))
	}
	return out
}

// TestRoleTable checks the table itself against rules that do not come
// from it: every route has exactly one entry, only the probes, the
// dashboard and sign-in are public, reads are open to viewers (but
// operator accounts are admin business), and every change needs at least
// the operator role.
func TestRoleTable(t *testing.T) {
	registered := registeredAPI(t)
	seen := map[string]bool{}
	for _, p := range registered {
		seen[p] = true
		if _, ok := routeAccess[p]; !ok {
			t.Errorf("route %q has no entry in routeAccess (routes.go): give it a minimum role", p)
		}
	}
	for p := range routeAccess {
		if !seen[p] {
			t.Errorf("routeAccess lists %q, which routes.go does not register", p)
		}
	}
	wantPublic := []string{"GET /healthz", "GET /readyz", "GET /metrics", "GET /{$}", "GET /static/", "POST /api/v1/login", "POST /api/v1/session"}
	var gotPublic []string
	for _, p := range slices.Sorted(maps.Keys(routeAccess)) {
		acc := routeAccess[p]
		method, path, _ := strings.Cut(p, " ")
		switch {
		case acc.min == public:
			gotPublic = append(gotPublic, p)
		case !acc.min.Valid():
			t.Errorf("%s: role %q is not a role", p, acc.min)
		case strings.HasPrefix(path, "/api/v1/operators"):
			if acc.min != admin {
				t.Errorf("%s: operator accounts need admin, table says %q", p, acc.min)
			}
		case method == "GET" || p == "/api/" || p == "DELETE /api/v1/session":
			if acc.min != viewer {
				t.Errorf("%s: a read should be open to viewers, table says %q", p, acc.min)
			}
		default:
			if !acc.min.AtLeast(operator) {
				t.Errorf("%s: a change needs at least the operator role, table says %q", p, acc.min)
			}
		}
		if acc.self && !strings.Contains(path, "{name}") {
			t.Errorf("%s: self access on a route without {name}", p)
		}
	}
	slices.Sort(wantPublic)
	if !slices.Equal(gotPublic, wantPublic) {
		t.Errorf("public routes = %v, want %v", gotPublic, wantPublic)
	}
}

// TestRoleMatrix sends every route in routes.go as every caller and checks
// the status: 401 without a valid token, 403 for a role below the route's,
// anything else (the handler's own answer) when the role suffices.
func TestRoleMatrix(t *testing.T) {
	f := newRoleFixture(t)
	callers := []string{callerNone, callerRevoked, callerGarbage, callerViewer, callerOperator, callerAdmin, callerBootstrap}
	for _, p := range registeredAPI(t) {
		acc := routeAccess[p]
		method, path, ok := routeSample(p)
		if !ok {
			method, path = "GET", "/api/v1/no-such-route" // the /api/ mount
		}
		for _, c := range callers {
			t.Run(p+"/"+c, func(t *testing.T) {
				r := f.do(t, c, method, path, "")
				role, named := callerRoles[c]
				switch {
				case acc.min == public:
					if r.status == http.StatusUnauthorized || r.status == http.StatusForbidden {
						t.Fatalf("public route answered %d %s", r.status, r.body)
					}
				case !named:
					if r.status != http.StatusUnauthorized {
						t.Fatalf("status %d, want 401: %s", r.status, r.body)
					}
					if r.header.Get("WWW-Authenticate") == "" {
						t.Error("401 without WWW-Authenticate")
					}
				case !role.AtLeast(acc.min):
					if r.status != http.StatusForbidden {
						t.Fatalf("status %d, want 403: %s", r.status, r.body)
					}
					if e := errorOf(t, r); e.Code != backend.CodeForbidden {
						t.Errorf("code %q", e.Code)
					}
				default:
					if r.status == http.StatusUnauthorized || r.status == http.StatusForbidden {
						t.Fatalf("role %q refused with %d: %s", role, r.status, r.body)
					}
				}
			})
		}
	}
}

// TestSelfTokens: any operator manages its own tokens, not another's.
func TestSelfTokens(t *testing.T) {
	f := newRoleFixture(t)
	r := f.do(t, callerViewer, "POST", "/api/v1/operators/"+callerViewer+"/tokens", `{"label":"laptop"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("own token = %d %s", r.status, r.body)
	}
	if r := f.do(t, callerViewer, "GET", "/api/v1/operators/"+callerViewer+"/tokens", ""); r.status != http.StatusOK || !strings.Contains(r.body, "laptop") {
		t.Fatalf("own tokens = %d %s", r.status, r.body)
	}
	for _, m := range []string{"GET", "POST"} {
		if r := f.do(t, callerOperator, m, "/api/v1/operators/"+callerViewer+"/tokens", ""); r.status != http.StatusForbidden {
			t.Errorf("%s another's tokens = %d %s", m, r.status, r.body)
		}
	}
}

// snapshot is every key under the fixture's prefix with its DUMP.
func (f *roleFixture) snapshot(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, k := range redistest.Keys(t, f.rdb, f.prefix) { // every master on a Cluster
		v, err := f.rdb.Dump(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	return out
}

// mutatingBodies are valid requests for the mutating routes, so that a
// missing role check would change something.
var mutatingBodies = map[string]string{
	"POST /api/v1/devices":                 `{"id":"dev-2"}`,
	"POST /api/v1/devices/{id}/commands":   `{"action":"write_register","target_register":"export_power","value":50}`,
	"PUT /api/v1/devices/{id}/config":      `{"sampling_interval":3}`,
	"POST /api/v1/operators":               `{"name":"mallory","password":"pw","role":"admin"}`,
	"POST /api/v1/operators/{name}/tokens": `{}`,
	"POST /api/v1/rollouts":                `{"version":"9.9.9","devices":["dev-1"]}`,
	"POST /api/v1/devices/{id}/fota":       `{"version":"9.9.9"}`,
}

// TestViewerChangesNothing sends every mutating route as a viewer, with a
// body that would work for an admin: each is 403 and Redis is unchanged.
func TestViewerChangesNothing(t *testing.T) {
	f := newRoleFixture(t)
	// The token's last_used is written at its first use; use it once.
	if r := f.do(t, callerViewer, "GET", "/api/v1/whoami", ""); r.status != http.StatusOK || !strings.Contains(r.body, `"role":"viewer"`) {
		t.Fatalf("whoami = %d %s", r.status, r.body)
	}
	before := f.snapshot(t)
	n := 0
	for _, p := range registeredAPI(t) {
		method, path, ok := routeSample(p)
		if !ok || method == "GET" || routeAccess[p].min == public || p == "DELETE /api/v1/session" {
			continue
		}
		n++
		if r := f.do(t, callerViewer, method, path, mutatingBodies[p]); r.status != http.StatusForbidden {
			t.Errorf("viewer %s = %d %s", p, r.status, r.body)
		}
	}
	if n < 15 {
		t.Fatalf("only %d mutating routes", n)
	}
	if after := f.snapshot(t); !maps.Equal(before, after) {
		t.Errorf("a viewer's refused requests changed Redis: %d keys before, %d after", len(before), len(after))
	}
	// The comparison can see a change: the same config as an operator.
	if r := f.do(t, callerOperator, "PUT", "/api/v1/devices/dev-1/config", mutatingBodies["PUT /api/v1/devices/{id}/config"]); r.status != http.StatusOK {
		t.Fatalf("operator PUT config = %d %s", r.status, r.body)
	}
	if after := f.snapshot(t); maps.Equal(before, after) {
		t.Error("snapshot did not see the operator's change")
	}
}

// TestAuditNamesOperator: a change made with an operator's token names
// that operator in the device's timeline and the config history; the
// bootstrap token is "admin" unless the header names someone. Config and
// label changes alike (labels once took the header from any token).
func TestAuditNamesOperator(t *testing.T) {
	f := newRoleFixture(t)
	for i, tc := range []struct{ caller, header, want string }{
		{callerOperator, "", callerOperator},
		{callerOperator, "someone-else", callerOperator}, // a named token cannot pose as another
		{callerBootstrap, "", BootstrapName},
		{callerBootstrap, "carol", "carol"},
	} {
		for _, change := range []struct{ method, path, body string }{
			{"PUT", "/api/v1/devices/dev-1/config", fmt.Sprintf(`{"upload_interval":%d}`, 20+5*i)},
			{"PATCH", "/api/v1/devices/dev-1/labels", fmt.Sprintf(`{"site":"s%d"}`, i)},
		} {
			req, _ := http.NewRequest(change.method, f.srv.URL+change.path, strings.NewReader(change.body))
			req.Header.Set("Authorization", f.tokens[tc.caller])
			if tc.header != "" {
				req.Header.Set(OperatorHeader, tc.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%+v: %s %s = %d", tc, change.method, change.path, resp.StatusCode)
			}
			r := f.do(t, callerViewer, "GET", "/api/v1/devices/dev-1/events?n=1", "")
			var got struct {
				Events []backend.Event `json:"events"`
			}
			if err := json.Unmarshal([]byte(r.body), &got); err != nil || len(got.Events) != 1 {
				t.Fatalf("events = %d %s (%v)", r.status, r.body, err)
			}
			if ev := got.Events[0]; ev.By != tc.want || !strings.Contains(string(ev.Data), `"by":"`+tc.want+`"`) {
				t.Errorf("%+v: %s %s: event by %q data %s, want %q", tc, change.method, change.path, ev.By, ev.Data, tc.want)
			}
		}
	}
	if r := f.do(t, callerBootstrap, "GET", "/api/v1/devices", ""); r.status != http.StatusOK {
		t.Fatal(r.status)
	}
}

// TestOperatorAccounts: create, list, token shown once and stored only as
// its digest, revoke, delete; the last admin cannot be deleted.
func TestOperatorAccounts(t *testing.T) {
	f := newRoleFixture(t)
	r := f.do(t, callerAdmin, "POST", "/api/v1/operators", `{"name":"newbie","password":"s3cret","role":"operator"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create = %d %s", r.status, r.body)
	}
	if strings.Contains(r.body, "s3cret") || strings.Contains(r.body, "hash") {
		t.Errorf("create answer shows the password: %s", r.body)
	}
	for _, tc := range []struct{ body, field string }{
		{`{"name":"newbie","password":"x","role":"viewer"}`, "name"}, // exists
		{`{"name":"b b","password":"x","role":"viewer"}`, "name"},
		{`{"name":"bob","password":"","role":"viewer"}`, "password"},
		{`{"name":"bob","password":"x","role":"root"}`, "role"},
		{`{"name":"dev-1","password":"x","role":"viewer"}`, "name"}, // a device's id
		{`{"name":"bob","password":"x","role":"viewer","extra":1}`, "extra"},
	} {
		before := f.snapshot(t)
		r := f.do(t, callerAdmin, "POST", "/api/v1/operators", tc.body)
		if r.status != http.StatusBadRequest && r.status != http.StatusConflict {
			t.Errorf("%s = %d %s", tc.body, r.status, r.body)
		} else if e := errorOf(t, r); e.Field != tc.field {
			t.Errorf("%s: field %q, want %q", tc.body, e.Field, tc.field)
		}
		if !maps.Equal(before, f.snapshot(t)) {
			t.Errorf("%s changed Redis", tc.body)
		}
	}
	r = f.do(t, callerAdmin, "GET", "/api/v1/operators", "")
	if r.status != http.StatusOK || !strings.Contains(r.body, `"name":"newbie","role":"operator"`) || strings.Contains(r.body, "hash") {
		t.Fatalf("list = %d %s", r.status, r.body)
	}

	// A token: shown once, stored as its SHA-256 only.
	r = f.do(t, callerAdmin, "POST", "/api/v1/operators/newbie/tokens", `{"label":"ci"}`)
	var created struct {
		ID, Token string
	}
	if err := json.Unmarshal([]byte(r.body), &created); err != nil || r.status != http.StatusCreated || !strings.HasPrefix(created.Token, backend.TokenPrefix) || len(created.Token) < 40 {
		t.Fatalf("token = %d %s", r.status, r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Error("token answer may be cached")
	}
	for k, v := range f.snapshot(t) {
		if strings.Contains(k, created.Token) || strings.Contains(v, created.Token) {
			t.Fatalf("key %s holds the token in clear", k)
		}
	}
	digest := backend.TokenDigest(created.Token)
	if n, _ := f.rdb.Exists(context.Background(), f.prefix+"{ops}:tok:"+digest).Result(); n != 1 {
		t.Fatal("token digest not stored")
	}
	f.tokens["newbie"] = "Bearer " + created.Token
	if r := f.do(t, "newbie", "GET", "/api/v1/whoami", ""); !strings.Contains(r.body, `"operator":"newbie","role":"operator"`) {
		t.Fatalf("whoami = %s", r.body)
	}
	r = f.do(t, callerAdmin, "GET", "/api/v1/operators/newbie/tokens", "")
	if r.status != http.StatusOK || !strings.Contains(r.body, created.ID) || !strings.Contains(r.body, "last_used") || strings.Contains(r.body, created.Token) || strings.Contains(r.body, digest) {
		t.Fatalf("token list = %d %s", r.status, r.body)
	}
	if r := f.do(t, callerAdmin, "DELETE", "/api/v1/operators/newbie/tokens/"+created.ID, ""); r.status != http.StatusOK {
		t.Fatalf("revoke = %d %s", r.status, r.body)
	}
	if r := f.do(t, "newbie", "GET", "/api/v1/whoami", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked token = %d %s", r.status, r.body)
	}
	if r := f.do(t, callerAdmin, "DELETE", "/api/v1/operators/newbie/tokens/"+created.ID, ""); r.status != http.StatusNotFound {
		t.Fatalf("revoke twice = %d %s", r.status, r.body)
	}

	// Deleting an operator revokes its tokens.
	if r := f.do(t, callerAdmin, "DELETE", "/api/v1/operators/"+callerOperator, ""); r.status != http.StatusOK {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	if r := f.do(t, callerOperator, "GET", "/api/v1/devices", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("deleted operator's token = %d", r.status)
	}
	if r := f.do(t, callerAdmin, "DELETE", "/api/v1/operators/nobody", ""); r.status != http.StatusNotFound {
		t.Fatalf("delete unknown = %d", r.status)
	}

	// The last admin stays, whoever asks (even the bootstrap token).
	for _, c := range []string{callerAdmin, callerBootstrap} {
		before := f.snapshot(t)
		r := f.do(t, c, "DELETE", "/api/v1/operators/"+callerAdmin, "")
		if r.status != http.StatusConflict || !strings.Contains(r.body, "last admin") {
			t.Fatalf("%s deleting the last admin = %d %s", c, r.status, r.body)
		}
		if !maps.Equal(before, f.snapshot(t)) {
			t.Error("refused deletion changed Redis")
		}
	}
	// With a second admin, the first may go.
	if r := f.do(t, callerBootstrap, "POST", "/api/v1/operators", `{"name":"ada2","password":"pw","role":"admin"}`); r.status != http.StatusCreated {
		t.Fatal(r.body)
	}
	if r := f.do(t, callerAdmin, "DELETE", "/api/v1/operators/"+callerAdmin, ""); r.status != http.StatusOK {
		t.Fatalf("delete with another admin = %d %s", r.status, r.body)
	}
}

// TestLogin: a name and password get a token; a wrong one gets 401 and
// no token.
func TestLogin(t *testing.T) {
	f := newRoleFixture(t)
	for _, body := range []string{
		`{"name":"vera","password":"wrong"}`,
		`{"name":"nobody","password":"pw"}`,
		`{"name":"vera"}`,
	} {
		before := f.snapshot(t)
		if r := f.do(t, callerNone, "POST", "/api/v1/login", body); r.status != http.StatusUnauthorized {
			t.Errorf("%s = %d %s", body, r.status, r.body)
		}
		if !maps.Equal(before, f.snapshot(t)) {
			t.Errorf("%s changed Redis", body)
		}
	}
	r := f.do(t, callerNone, "POST", "/api/v1/login", `{"name":"vera","password":"pw-vera","label":"cli"}`)
	var got struct{ Token, Role, Operator string }
	if json.Unmarshal([]byte(r.body), &got); r.status != http.StatusCreated || got.Role != "viewer" || got.Operator != callerViewer {
		t.Fatalf("login = %d %s", r.status, r.body)
	}
	f.tokens["login"] = "Bearer " + got.Token
	if r := f.do(t, "login", "GET", "/api/v1/whoami", ""); r.status != http.StatusOK || !strings.Contains(r.body, `"operator":"vera"`) {
		t.Fatalf("whoami = %d %s", r.status, r.body)
	}
}

// TestOpenAPIRoles: each operation's x-role (and x-role-self) in
// docs/openapi.yaml is its routeAccess entry; public ones have none and
// `security: []`.
func TestOpenAPIRoles(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := map[string]map[string]any{} // normalised route -> operation
	for path, item := range doc.Paths {
		for _, m := range openAPIMethods {
			if op, ok := item[m].(map[string]any); ok {
				ops[normaliseRoute(strings.ToUpper(m)+" "+path)] = op
			}
		}
	}
	for p, acc := range routeAccess {
		_, path, hasMethod := strings.Cut(p, " ")
		if !hasMethod || !strings.HasPrefix(path, "/api/") {
			continue
		}
		op, ok := ops[normaliseRoute(p)]
		if !ok {
			continue // TestOpenAPIMatchesRoutes reports it
		}
		role, _ := op["x-role"].(string)
		self, _ := op["x-role-self"].(bool)
		if role != string(acc.min) || self != acc.self {
			t.Errorf("%s: openapi x-role %q x-role-self %v, routeAccess %q %v", p, role, self, acc.min, acc.self)
		}
		if sec, ok := op["security"].([]any); acc.min == public && (!ok || len(sec) != 0) {
			t.Errorf("%s: public route without `security: []`", p)
		}
	}
}

// TestDashboardSession: the dashboard's cookie is HttpOnly, SameSite=Strict
// and Secure over TLS; a change made with it needs the CSRF header; signing
// out revokes it.
func TestDashboardSession(t *testing.T) {
	f := newRoleFixture(t)
	signIn := func(name, pw string) (*http.Cookie, result) {
		r := f.do(t, callerNone, "POST", "/api/v1/session", fmt.Sprintf(`{"name":%q,"password":%q}`, name, pw))
		for _, c := range (&http.Response{Header: r.header}).Cookies() {
			if c.Name == SessionCookie {
				return c, r
			}
		}
		return nil, r
	}
	if c, r := signIn(callerOperator, "wrong"); r.status != http.StatusUnauthorized || c != nil {
		t.Fatalf("wrong password = %d, cookie %v", r.status, c)
	}
	c, r := signIn(callerOperator, "pw-"+callerOperator)
	if r.status != http.StatusCreated || c == nil || !strings.Contains(r.body, `"role":"operator"`) {
		t.Fatalf("sign in = %d %s", r.status, r.body)
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" || c.MaxAge <= 0 {
		t.Errorf("cookie over plain HTTP %+v", c)
	}
	if strings.Contains(r.body, c.Value) {
		t.Error("the session token is in the body, where JavaScript reads it")
	}
	withCookie := func(method, path, body string, csrf bool) result {
		req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		req.AddCookie(c)
		if csrf {
			req.Header.Set(CSRFHeader, "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return result{resp.StatusCode, resp.Header, string(b)}
	}
	if r := withCookie("GET", "/api/v1/whoami", "", false); r.status != http.StatusOK || !strings.Contains(r.body, callerOperator) {
		t.Fatalf("whoami by cookie = %d %s", r.status, r.body)
	}
	before := f.snapshot(t)
	if r := withCookie("PUT", "/api/v1/devices/dev-1/config", `{"sampling_interval":3}`, false); r.status != http.StatusForbidden || !strings.Contains(r.body, CSRFHeader) {
		t.Fatalf("change without the CSRF header = %d %s", r.status, r.body)
	}
	if !maps.Equal(before, f.snapshot(t)) {
		t.Error("refused change altered Redis")
	}
	if r := withCookie("PUT", "/api/v1/devices/dev-1/config", `{"sampling_interval":3}`, true); r.status != http.StatusOK {
		t.Fatalf("change with the CSRF header = %d %s", r.status, r.body)
	}
	if r := withCookie("DELETE", "/api/v1/session", "", true); r.status != http.StatusOK || !strings.Contains(r.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("sign out = %d %s %v", r.status, r.body, r.header)
	}
	if r := withCookie("GET", "/api/v1/whoami", "", false); r.status != http.StatusUnauthorized {
		t.Fatalf("after sign out = %d", r.status)
	}

	// Over TLS the cookie is Secure.
	req := httptest.NewRequest("POST", "https://ecowatt.example/api/v1/session", strings.NewReader(`{"name":"vera","password":"pw-vera"}`))
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	cs := rec.Result().Cookies()
	if rec.Code != http.StatusCreated || len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("TLS sign in = %d, cookies %+v", rec.Code, cs)
	}
}
