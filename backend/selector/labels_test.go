package selector

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

func TestValidateLabels(t *testing.T) {
	sixteen := map[string]string{}
	for i := range MaxLabels {
		sixteen[fmt.Sprintf("k%d", i)] = "v"
	}
	seventeen := maps.Clone(sixteen)
	seventeen["k99"] = "v"
	for _, tc := range []struct {
		name   string
		labels map[string]string
		field  string // "" = valid
		reason string
	}{
		{"empty", nil, "", ""},
		{"typical", map[string]string{"site": "colombo", "model": "SG5K", "beta": ""}, "", ""},
		{"sixteen", sixteen, "", ""},
		{"dotted key", map[string]string{"rack.row-2_a": "New York 3"}, "", ""},
		{"longest", map[string]string{strings.Repeat("k", 63): strings.Repeat("v", 63)}, "", ""},
		{"seventeen", seventeen, "labels", "at most 16"},
		{"upper-case key", map[string]string{"Site": "x"}, "labels.Site", "not allowed in a label key"},
		{"empty key", map[string]string{"": "x"}, "labels.", "1-63 characters"},
		{"key starts with dot", map[string]string{".site": "x"}, "labels..site", "must start and end"},
		{"key too long", map[string]string{strings.Repeat("k", 64): "x"}, "labels." + strings.Repeat("k", 64), "1-63 characters"},
		{"reserved key", map[string]string{"online": "x"}, "labels.online", "built-in selector field"},
		{"value too long", map[string]string{"site": strings.Repeat("v", 64)}, "labels.site", "at most 63"},
		{"value with comma", map[string]string{"site": "a,b"}, "labels.site", "','"},
		{"value with paren", map[string]string{"site": "a(b"}, "labels.site", "'('"},
		{"value with equals", map[string]string{"site": "a=b"}, "labels.site", "'='"},
		{"value with bang", map[string]string{"site": "a!"}, "labels.site", "'!'"},
		{"value non-ASCII", map[string]string{"site": "colombó"}, "labels.site", "not printable ASCII"},
		{"value newline", map[string]string{"site": "a\nb"}, "labels.site", "not printable ASCII"},
		{"value trailing space", map[string]string{"site": "a "}, "labels.site", "start or end with a space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateLabels(tc.labels)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("ValidateLabels: %v", err)
				}
				return
			}
			var le *LabelError
			if !errors.As(err, &le) || le.Field != tc.field || !strings.Contains(le.Reason, tc.reason) {
				t.Fatalf("ValidateLabels = %v; want field %q reason containing %q", err, tc.field, tc.reason)
			}
		})
	}
}

func TestPatch(t *testing.T) {
	str := func(s string) *string { return &s }
	old := map[string]string{"site": "colombo", "model": "SG5K"}
	got, changed, err := Patch(old, map[string]*string{"site": str("galle"), "model": nil, "beta": str("")})
	if err != nil || !changed || !maps.Equal(got, map[string]string{"site": "galle", "beta": ""}) {
		t.Fatalf("Patch = %v %v %v", got, changed, err)
	}
	if !maps.Equal(old, map[string]string{"site": "colombo", "model": "SG5K"}) {
		t.Fatalf("Patch changed its input: %v", old)
	}
	if _, changed, err := Patch(old, map[string]*string{"site": str("colombo"), "absent": nil}); err != nil || changed {
		t.Fatalf("no-op patch: changed=%v err=%v", changed, err)
	}
	// Deleting an invalid key is a no-op, not an error: it cannot exist.
	if _, _, err := Patch(old, map[string]*string{"Bad Key": nil}); err != nil {
		t.Fatalf("delete of a key that cannot exist: %v", err)
	}
	var le *LabelError
	if _, _, err := Patch(old, map[string]*string{"site": str("a,b")}); !errors.As(err, &le) || le.Field != "labels.site" {
		t.Fatalf("bad value: %v", err)
	}
	many := map[string]*string{}
	for i := range MaxLabels - 1 {
		many[fmt.Sprintf("k%d", i)] = str("v")
	}
	if _, _, err := Patch(old, many); !errors.As(err, &le) || le.Field != "labels" {
		t.Fatalf("17 labels after patch: %v", err)
	}
}
