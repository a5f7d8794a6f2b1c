package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// A rotate_key job needs admin although the job route is operator-level:
// an operator gets 403 (however it spells the field) and no job exists;
// an admin creates it, and the job names the admin.
func TestRotateKeyJobNeedsAdmin(t *testing.T) {
	f := newRoleFixture(t)
	keys, _ := store.NewKeys(f.prefix)
	js, err := jobs.New(jobs.Config{Redis: f.rdb, Keys: keys, Fleet: f.svc, Rotations: f.svc,
		Logger: zerolog.Nop(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Close()
	f.srv = httptest.NewServer(NewServer(Deps{Fleet: f.svc, AdminToken: token, Jobs: js,
		Logger: zerolog.New(zerolog.NewTestWriter(t))}))
	t.Cleanup(f.srv.Close)

	for _, body := range []string{
		`{"devices":["dev-1"],"rotate_key":{},"max_per_minute":10}`,
		`{"devices":["dev-1"],"Rotate_Key":{},"max_per_minute":10}`,
	} {
		before := f.snapshot(t)
		r := f.do(t, callerOperator, "POST", "/api/v1/jobs", body)
		if r.status != http.StatusForbidden {
			t.Fatalf("operator %s: status %d, want 403: %s", body, r.status, r.body)
		}
		if e := errorOf(t, r); e.Code != backend.CodeForbidden || e.Field != "rotate_key" {
			t.Errorf("operator: error %+v", e)
		}
		if after := f.snapshot(t); len(after) != len(before) {
			t.Errorf("a refused job changed Redis: %d keys before, %d after", len(before), len(after))
		}
	}
	if l, _ := js.List(context.Background(), 10); len(l) != 0 {
		t.Fatalf("jobs after the refusals: %+v", l)
	}
	if r := f.do(t, callerViewer, "POST", "/api/v1/jobs", `{"devices":["dev-1"],"rotate_key":{},"max_per_minute":10}`); r.status != http.StatusForbidden {
		t.Fatalf("viewer: status %d", r.status)
	}
	r := f.do(t, callerAdmin, "POST", "/api/v1/jobs", `{"devices":["dev-1"],"rotate_key":{},"max_per_minute":10}`)
	if r.status != http.StatusCreated {
		t.Fatalf("admin: status %d: %s", r.status, r.body)
	}
	var j jobs.Job
	if err := json.Unmarshal([]byte(r.body), &j); err != nil {
		t.Fatal(err)
	}
	if j.Kind != jobs.KindRotateKey || j.By != callerAdmin || j.Total != 1 {
		t.Fatalf("admin's job %+v, want a rotate_key job of 1 device by %s", j, callerAdmin)
	}
	// The operator still creates other jobs (here refused only because
	// this server serves no config jobs: 503, not 403).
	if r := f.do(t, callerOperator, "POST", "/api/v1/jobs", `{"devices":["dev-1"],"config":{"sampling_interval":10},"max_per_minute":10}`); r.status != http.StatusServiceUnavailable {
		t.Fatalf("operator config job: status %d: %s", r.status, r.body)
	}
}
