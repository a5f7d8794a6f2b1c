package httpapi

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
)

func TestLabelsAPI(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + token
	labelsOf := func(t *testing.T, id string) map[string]string {
		t.Helper()
		r := f.do(t, "GET", "/api/v1/devices/"+id, auth, "")
		var d struct{ Labels map[string]string }
		if err := json.Unmarshal([]byte(r.body), &d); err != nil || r.status != 200 || d.Labels == nil {
			t.Fatalf("GET %s = %d %s", id, r.status, r.body)
		}
		return d.Labels
	}
	eventsOf := func(t *testing.T, id string) int {
		t.Helper()
		r := f.do(t, "GET", "/api/v1/devices/"+id+"/events", auth, "")
		var e struct{ Events []json.RawMessage }
		if err := json.Unmarshal([]byte(r.body), &e); err != nil || r.status != 200 {
			t.Fatalf("events %s = %d %s", id, r.status, r.body)
		}
		return len(e.Events)
	}

	if r := f.do(t, "POST", "/api/v1/devices", auth, `{"id":"inv-1","labels":{"site":"colombo","model":"SG5K"}}`); r.status != http.StatusCreated {
		t.Fatalf("POST with labels = %d %s", r.status, r.body)
	}
	if got := labelsOf(t, "inv-1"); !maps.Equal(got, map[string]string{"site": "colombo", "model": "SG5K"}) {
		t.Fatalf("labels = %v", got)
	}
	if r := f.do(t, "POST", "/api/v1/devices", auth, `{"id":"inv-2"}`); r.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	if got := labelsOf(t, "inv-2"); len(got) != 0 {
		t.Fatalf("unlabelled device shows %v", got)
	}

	r := f.do(t, "PATCH", "/api/v1/devices/inv-1/labels", auth, `{"site":"galle","model":null,"beta":""}`)
	var ch struct {
		ID      string
		Labels  map[string]string
		Changed bool
	}
	if err := json.Unmarshal([]byte(r.body), &ch); err != nil || r.status != 200 || !ch.Changed ||
		!maps.Equal(ch.Labels, map[string]string{"site": "galle", "beta": ""}) {
		t.Fatalf("PATCH = %d %s", r.status, r.body)
	}
	if got := labelsOf(t, "inv-1"); !maps.Equal(got, ch.Labels) {
		t.Fatalf("GET after PATCH = %v", got)
	}

	tooMany := map[string]string{}
	for i := range 17 {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	many, _ := json.Marshal(tooMany)
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code, field              string
	}{
		{"create: bad key", "POST", "/api/v1/devices", `{"id":"x1","labels":{"Site":"a"}}`, 400, "invalid", "labels.Site"},
		{"create: reserved key", "POST", "/api/v1/devices", `{"id":"x1","labels":{"online":"a"}}`, 400, "invalid", "labels.online"},
		{"create: bad value", "POST", "/api/v1/devices", `{"id":"x1","labels":{"site":"a=b"}}`, 400, "invalid", "labels.site"},
		{"create: long value", "POST", "/api/v1/devices", `{"id":"x1","labels":{"site":"` + strings.Repeat("v", 64) + `"}}`, 400, "invalid", "labels.site"},
		{"create: too many", "POST", "/api/v1/devices", `{"id":"x1","labels":` + string(many) + `}`, 400, "invalid", "labels"},
		{"create: value not a string", "POST", "/api/v1/devices", `{"id":"x1","labels":{"site":5}}`, 400, "invalid", "labels.site"},
		{"patch: bad key", "PATCH", "/api/v1/devices/inv-1/labels", `{"bad key":"a"}`, 400, "invalid", "labels.bad key"},
		{"patch: bad value", "PATCH", "/api/v1/devices/inv-1/labels", `{"site":"a,b"}`, 400, "invalid", "labels.site"},
		{"patch: too many", "PATCH", "/api/v1/devices/inv-1/labels", string(many), 400, "invalid", "labels"},
		{"patch: number", "PATCH", "/api/v1/devices/inv-1/labels", `{"site":7}`, 400, "invalid", "labels.site"},
		{"patch: not an object", "PATCH", "/api/v1/devices/inv-1/labels", `["site"]`, 400, "invalid", ""},
		{"patch: null body", "PATCH", "/api/v1/devices/inv-1/labels", `null`, 400, "invalid", ""},
		{"patch: empty body", "PATCH", "/api/v1/devices/inv-1/labels", ``, 400, "invalid", ""},
		{"patch: unknown device", "PATCH", "/api/v1/devices/nobody/labels", `{"site":"a"}`, 404, "not_found", "id"},
		{"patch: wrong method", "PUT", "/api/v1/devices/inv-1/labels", `{"site":"a"}`, 405, "method_not_allowed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, events := labelsOf(t, "inv-1"), eventsOf(t, "inv-1")
			r := f.do(t, tc.method, tc.path, auth, tc.body)
			e := errorOf(t, r)
			if r.status != tc.status || e.Code != tc.code || e.Field != tc.field || e.Message == "" {
				t.Fatalf("%s %s = %d %s; want %d code %s field %q", tc.method, tc.path, r.status, r.body, tc.status, tc.code, tc.field)
			}
			if got := labelsOf(t, "inv-1"); !maps.Equal(got, before) {
				t.Fatalf("labels changed to %v", got)
			}
			if n := eventsOf(t, "inv-1"); n != events {
				t.Fatalf("a refused request recorded an event (%d -> %d)", events, n)
			}
			if r := f.do(t, "GET", "/api/v1/devices/x1", auth, ""); r.status != 404 {
				t.Fatalf("a refused create made device x1: %d", r.status)
			}
		})
	}
}
