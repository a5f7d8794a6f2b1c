package store

import "testing"

// TestKeysOrDefault: the zero Keys of a service Config stand for
// DefaultPrefix; set Keys are kept.
func TestKeysOrDefault(t *testing.T) {
	if got := (Keys{}).OrDefault().Prefix(); got != DefaultPrefix {
		t.Errorf("zero Keys: prefix %q, want %q", got, DefaultPrefix)
	}
	k, err := NewKeys("other:")
	if err != nil {
		t.Fatal(err)
	}
	if got := k.OrDefault().Prefix(); got != "other:" {
		t.Errorf("set Keys: prefix %q, want other:", got)
	}
}
