package httpapi

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestFleetAPI(t *testing.T) {
	f := newFixture(t)
	auth := "Bearer " + token
	for i := range 12 {
		site := []string{"colombo", "galle"}[i%2]
		body := fmt.Sprintf(`{"id":"inv-%02d","labels":{"site":%q,"model":"SG5K"}}`, i, site)
		if r := f.do(t, "POST", "/api/v1/devices", auth, body); r.status != 201 {
			t.Fatalf("POST = %d %s", r.status, r.body)
		}
	}
	type page struct {
		Devices []struct {
			ID     string
			Labels map[string]string
		}
		Total      int
		NextCursor string `json:"next_cursor"`
	}
	get := func(t *testing.T, q string) (page, result) {
		t.Helper()
		r := f.do(t, "GET", "/api/v1/devices?"+q, auth, "")
		var p page
		if r.status == 200 {
			if err := json.Unmarshal([]byte(r.body), &p); err != nil {
				t.Fatal(err)
			}
		}
		return p, r
	}
	sel := "selector=" + url.QueryEscape("site=colombo,model in (SG5K)")
	var ids []string
	q := sel + "&limit=4"
	for {
		p, r := get(t, q)
		if r.status != 200 || p.Total != 6 || len(p.Devices) > 4 {
			t.Fatalf("page = %d %s", r.status, r.body)
		}
		for _, d := range p.Devices {
			if d.Labels["site"] != "colombo" {
				t.Fatalf("%s does not match: %v", d.ID, d.Labels)
			}
			ids = append(ids, d.ID)
		}
		if p.NextCursor == "" {
			break
		}
		q = sel + "&limit=4&cursor=" + url.QueryEscape(p.NextCursor)
	}
	if strings.Join(ids, ",") != "inv-00,inv-02,inv-04,inv-06,inv-08,inv-10" {
		t.Fatalf("pages = %v", ids)
	}
	// Without paging parameters: the whole list, as the dashboard expects.
	if p, r := get(t, ""); r.status != 200 || len(p.Devices) != 12 {
		t.Fatalf("unpaged list = %d %s", r.status, r.body)
	}

	r := f.do(t, "GET", "/api/v1/fleet/summary?"+sel, auth, "")
	var sum struct {
		Total  int
		Online map[string]int
		Config map[string]int
	}
	if err := json.Unmarshal([]byte(r.body), &sum); err != nil || r.status != 200 || sum.Total != 6 || sum.Online["offline"] != 6 || sum.Config["default"] != 6 {
		t.Fatalf("summary = %d %s", r.status, r.body)
	}

	first, _ := get(t, sel+"&limit=2")
	for _, tc := range []struct {
		name, path, field, msg string
	}{
		{"bad selector", "/api/v1/devices?selector=" + url.QueryEscape("model in SG5K"), "selector", "at byte 9"},
		{"bad selector in summary", "/api/v1/fleet/summary?selector=" + url.QueryEscape("site=a,,b"), "selector", "at byte 7"},
		{"limit zero", "/api/v1/devices?limit=0", "limit", "1-1000"},
		{"limit too big", "/api/v1/devices?limit=1001", "limit", "1-1000"},
		{"limit not a number", "/api/v1/devices?limit=ten", "limit", "1-1000"},
		{"bad sort", "/api/v1/devices?sort=name", "sort", "sort must be"},
		{"tampered cursor", "/api/v1/devices?" + sel + "&cursor=x" + url.QueryEscape(first.NextCursor), "cursor", "altered"},
		{"cursor of another query", "/api/v1/devices?selector=site%3Dgalle&cursor=" + url.QueryEscape(first.NextCursor), "cursor", "another query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, "GET", tc.path, auth, "")
			e := errorOf(t, r)
			if r.status != 400 || e.Code != "invalid" || e.Field != tc.field || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("%s = %d %s; want 400 on %s with %q", tc.path, r.status, r.body, tc.field, tc.msg)
			}
		})
	}
}
