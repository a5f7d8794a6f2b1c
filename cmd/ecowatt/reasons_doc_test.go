package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/broker"
)

// TestRejectionReasonsDocumented checks (issue 18 item 9) that the reason
// labels docs/OPERATIONS.md lists for the two rejection counters are
// exactly those the code uses, so that documented alerts match: every
// broker reason is also a backend security reason (the broker reports
// through BrokerRejection), and each table row names its counter's reasons
// and no other.
func TestRejectionReasonsDocumented(t *testing.T) {
	for _, r := range broker.Reasons() {
		if !slices.Contains(backend.SecurityReasons(), r) {
			t.Errorf("broker reason %q is not a backend security reason", r)
		}
	}
	raw, err := os.ReadFile("../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		metric string
		want   []string
	}{
		{"ecowatt_security_rejections_total", backend.SecurityReasons()},
		{"ecowatt_broker_rejections_total", broker.Reasons()},
	} {
		var row string
		for line := range strings.Lines(string(raw)) {
			if strings.HasPrefix(line, "| `"+tc.metric+"`") {
				row = line
			}
		}
		if row == "" {
			t.Errorf("no table row for %s", tc.metric)
			continue
		}
		cells := strings.Split(row, "|")
		var doc []string
		for _, m := range regexp.MustCompile("`([a-z0-9_]+)`").FindAllStringSubmatch(cells[len(cells)-2], -1) {
			if !strings.HasPrefix(m[1], "ecowatt_") { // a metric named in passing
				doc = append(doc, m[1])
			}
		}
		for _, r := range tc.want {
			if !slices.Contains(doc, r) {
				t.Errorf("%s: reason %q is used by the code but not listed in OPERATIONS.md", tc.metric, r)
			}
		}
		for _, r := range doc {
			if !slices.Contains(tc.want, r) {
				t.Errorf("%s: OPERATIONS.md lists reason %q, which the code never uses", tc.metric, r)
			}
		}
	}
}
