package main

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
)

// labelsOf reads a device's labels through the API.
func labelsOf(t *testing.T, s *testServer, id string) map[string]string {
	t.Helper()
	var d backend.Device
	if code := s.api(t, "GET", "/api/v1/devices/"+id, nil, &d); code != 200 {
		t.Fatalf("GET %s: %d", id, code)
	}
	return d.Labels
}

// listIDs runs `device list -o json` with args and returns the IDs in order.
func listIDs(t *testing.T, s *testServer, args ...string) []string {
	t.Helper()
	out, err := s.cli(t, append([]string{"device", "list", "-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("device list %v: %v\n%s", args, err, out)
	}
	var doc devicePageDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("device list %v: %v\n%s", args, err, out)
	}
	ids := []string{}
	for _, d := range doc.Devices {
		ids = append(ids, d.ID)
	}
	if !slices.Contains(args, "--page") && doc.Total != len(ids) {
		t.Errorf("device list %v: total %d, %d devices", args, doc.Total, len(ids))
	}
	return ids
}

// TestCLIFleetLabelsAndSelectors: labels given at provisioning (one device
// and --count) and changed with `device label` are what the server holds;
// `device list --selector` follows every cursor and returns exactly the
// matching devices in order; --page prints one page with its cursor;
// `fleet summary` prints the server's counts.
func TestCLIFleetLabelsAndSelectors(t *testing.T) {
	s := startServer(t)
	if out, err := s.cli(t, "device", "add", "--count", "7", "--prefix", "col", "--label", "site=colombo", "--label", "model=SG5K"); err != nil {
		t.Fatalf("device add --count: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "device", "add", "gal-1", "--label", "site=galle"); err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "device", "add", "bare-1"); err != nil {
		t.Fatalf("device add without labels: %v\n%s", err, out)
	}
	if got, want := labelsOf(t, s, "col-0003"), map[string]string{"site": "colombo", "model": "SG5K"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("col-0003 labels %v, want %v", got, want)
	}

	out, err := s.cli(t, "device", "label", "col-0007", "site=galle", "model-", "beta=yes")
	if err != nil || !strings.Contains(out, "col-0007 changed: beta=yes,site=galle") {
		t.Fatalf("device label: %v\n%s", err, out)
	}
	if got, want := labelsOf(t, s, "col-0007"), map[string]string{"site": "galle", "beta": "yes"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("col-0007 labels %v, want %v", got, want)
	}
	if out, err := s.cli(t, "device", "label", "col-0007", "site=galle"); err != nil || !strings.Contains(out, "unchanged") {
		t.Fatalf("device label, same value: %v\n%s", err, out)
	}

	cols := []string{"col-0001", "col-0002", "col-0003", "col-0004", "col-0005", "col-0006"}
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--selector", "site=colombo"}, cols},
		{[]string{"--selector", "site=colombo", "--limit", "2"}, cols}, // three pages followed
		{[]string{"--selector", "site=galle,beta"}, []string{"col-0007"}},
		{[]string{"--selector", "site in (galle,kandy)", "--limit", "1"}, []string{"col-0007", "gal-1"}},
		{[]string{"--selector", "!site"}, []string{"bare-1"}},
		{[]string{"--selector", "id~col-000", "--limit", "3", "--sort", "id"}, append(append([]string{}, cols...), "col-0007")},
		{[]string{"--selector", "site=nowhere"}, []string{}},
		{nil, append([]string{"bare-1"}, append(append(append([]string{}, cols...), "col-0007"), "gal-1")...)},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			if got := listIDs(t, s, tc.args...); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}

	// One page: the first two, and a cursor that leads to the next two.
	var stdout, stderr syncBuffer
	env := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": s.Token}
	if err := run(t.Context(), []string{"device", "list", "--selector", "site=colombo", "--limit", "2", "--page"},
		func(k string) string { return env[k] }, &stdout, &stderr); err != nil {
		t.Fatalf("--page: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "col-0002") || strings.Contains(stdout.String(), "col-0003") ||
		!strings.Contains(stdout.String(), "model=SG5K,site=colombo") {
		t.Fatalf("--page table:\n%s", stdout.String())
	}
	msg := stderr.String()
	_, cursor, ok := strings.Cut(strings.TrimSpace(msg), "--cursor ")
	if !strings.HasPrefix(msg, "2 of 6 device(s) matching") || !ok || cursor == "" {
		t.Fatalf("--page summary %q", msg)
	}
	if got := listIDs(t, s, "--selector", "site=colombo", "--limit", "2", "--page", "--cursor", cursor); !reflect.DeepEqual(got, cols[2:4]) {
		t.Fatalf("second page %v, want %v", got, cols[2:4])
	}

	out, err = s.cli(t, "fleet", "summary", "--selector", "site=colombo")
	if err != nil || !strings.Contains(out, "site=colombo") || !regexpLine(out, "TOTAL", "6") || !regexpLine(out, "ONLINE", "offline", "6") {
		t.Fatalf("fleet summary: %v\n%s", err, out)
	}
	out, err = s.cli(t, "fleet", "summary", "-o", "json")
	var sum backend.FleetSummary
	if err != nil || json.Unmarshal([]byte(out), &sum) != nil || sum.Total != 9 || sum.Online["offline"] != 9 {
		t.Fatalf("fleet summary -o json: %v %+v\n%s", err, sum, out)
	}
}

// regexpLine reports whether some line of out holds the fields in order,
// separated by white space only.
func regexpLine(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if reflect.DeepEqual(strings.Fields(l), fields) {
			return true
		}
	}
	return false
}

// TestCLIFleetBadInput: a bad label or selector is the server's clear
// error, exit status 1, and changes nothing; a malformed label argument
// is a usage error before anything is sent.
func TestCLIFleetBadInput(t *testing.T) {
	s := startServer(t)
	if out, err := s.cli(t, "device", "add", "b-1", "--label", "site=colombo"); err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	env := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": s.Token}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad label key at add", []string{"device", "add", "b-2", "--label", "Site=x"}, exitFailed, "labels.Site"},
		{"bad label value at add", []string{"device", "add", "b-3", "--label", "site=a,b"}, exitFailed, "labels.site"},
		{"bad label key in a patch", []string{"device", "label", "b-1", "site=galle", "BAD=1"}, exitFailed, "labels.BAD"},
		{"label of an unknown device", []string{"device", "label", "ghost", "site=galle"}, exitNotFound, "ghost"},
		{"bad selector", []string{"device", "list", "--selector", "site in (a"}, exitFailed, "selector: at byte"},
		{"bad selector in the summary", []string{"fleet", "summary", "--selector", "firmware<<1"}, exitFailed, "selector: at byte"},
		{"bad sort", []string{"device", "list", "--sort", "power"}, exitFailed, "sort"},
		{"limit out of range", []string{"device", "list", "--limit", "100000"}, exitFailed, "limit must be 1-"},
		{"tampered cursor", []string{"device", "list", "--page", "--cursor", "AAAA"}, exitFailed, "cursor"},
		{"label without = or -", []string{"device", "label", "b-1", "site"}, exitUsage, "KEY=VALUE to set a label or KEY- to delete it"},
		{"label without a change", []string{"device", "label", "b-1"}, exitUsage, "usage: ecowatt device label"},
		{"--label without =", []string{"device", "add", "b-4", "--label", "site"}, exitUsage, "want KEY=VALUE"},
		{"--cursor without --page", []string{"device", "list", "--cursor", "x"}, exitUsage, "--cursor needs --page"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, code, err := cliRun(env, tc.args...)
			if code != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("exit %d, err %v; want exit %d with %q", code, err, tc.code, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
	if got, want := labelsOf(t, s, "b-1"), map[string]string{"site": "colombo"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("b-1 labels %v after the bad patches, want %v", got, want)
	}
	if ids := listIDs(t, s); !reflect.DeepEqual(ids, []string{"b-1"}) {
		t.Fatalf("devices %v after the bad adds, want only b-1", ids)
	}
}
