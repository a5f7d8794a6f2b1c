package backend

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzIsWill checks that only an exact {"online":false} counts as a will.
func FuzzIsWill(f *testing.F) {
	for _, s := range []string{`{"online":false}`, `{"online":true}`, `{}`, `{"online":false,"x":1}`,
		`{"online":false}{}`, `{"nonce":1,"timestamp":1,"encrypted":false,"payload":"","mac":""}`, ` {"online" : false} `, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !isWill(b) {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("isWill accepted non-object %q", b)
		}
		for k, v := range m { // encoding/json matches field names case-insensitively
			if !strings.EqualFold(k, "online") || string(v) != "false" {
				t.Fatalf("isWill accepted %q", b)
			}
		}
	})
}

// FuzzShardOf checks that sharding never panics or leaves its range.
func FuzzShardOf(f *testing.F) {
	f.Add("ecowatt/v1/dev/d1/up/birth", 4)
	f.Add("", 1)
	f.Add("a/b/c/d", 7)
	f.Fuzz(func(t *testing.T, topic string, n int) {
		if n <= 0 || n > 1024 {
			return
		}
		if got := shardOf(topic, n); got < 0 || got >= n {
			t.Fatalf("shardOf(%q, %d) = %d", topic, n, got)
		}
	})
}
