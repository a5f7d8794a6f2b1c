package config

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/ecowatt/ecowatt/topics"
)

// FuzzParseAck: parseAck never panics, and what it accepts is a usable
// ack whose accepted values apply to a config.
func FuzzParseAck(f *testing.F) {
	for _, s := range []string{
		`{"config_ack":{"version":7,"accepted":[{"parameter":"sampling_interval","old":5,"new":10}],"rejected":[{"parameter":"registers","reason":"x"}],"unchanged":["upload_interval"]}}`,
		`{"config_ack":{"version":1,"accepted":[{"parameter":"registers","old":["voltage"],"new":["current","voltage"]}],"rejected":[],"unchanged":[]}}`,
		`{"config_ack":{"version":0}}`,
		`{"config_ack":null}`,
		`{}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, changes, err := parseAck(body)
		if err != nil {
			return
		}
		if a.Version <= 0 || len(changes) != len(a.Accepted) {
			t.Fatalf("accepted %+v with %d changes", a, len(changes))
		}
		cfg := topics.DefaultConfig()
		for _, c := range changes {
			if !slices.Contains(topics.ConfigParams, c.param) {
				t.Fatalf("applied unknown parameter %q", c.param)
			}
			c.apply(&cfg)
		}
		if _, err := json.Marshal(a); err != nil {
			t.Fatalf("accepted ack does not marshal: %v", err)
		}
	})
}
