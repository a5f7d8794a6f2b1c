package store

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

func TestNewClientForms(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		want      string // "client", "cluster" or "" (error)
		addrs     []string
	}{
		{"redis", "redis://127.0.0.1:6379/2", "client", []string{"127.0.0.1:6379"}},
		{"rediss", "rediss://u:p@h:6380", "client", []string{"h:6380"}},
		{"bare", "127.0.0.1:6379", "client", []string{"127.0.0.1:6379"}},
		{"cluster", "redis+cluster://h1:1,h2:2,h3:3", "cluster", []string{"h1:1", "h2:2", "h3:3"}},
		{"cluster with auth", "redis+cluster://u:p@h1:1,h2:2?dial_timeout=2s", "cluster", []string{"h1:1", "h2:2"}},
		{"comma list", "h1:1,h2:2", "cluster", []string{"h1:1", "h2:2"}},
		{"sentinel", "redis+sentinel://mymaster@s1:26379,s2:26379/1", "client", nil},
		{"sentinel with auth", "redis+sentinel://u:p@mymaster@s1:26379?password=x", "client", nil},
		{"sentinel without master", "redis+sentinel://s1:26379", "", nil},
		{"cluster with db", "redis+cluster://h1:1/3", "", nil},
		{"bad scheme", "http://h:1", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newClient(tc.url)
			if tc.want == "" {
				if err == nil {
					c.Close()
					t.Fatalf("newClient(%q) succeeded, want error", tc.url)
				}
				return
			}
			if err != nil {
				t.Fatalf("newClient(%q): %v", tc.url, err)
			}
			defer c.Close()
			switch cc := c.(type) {
			case *redis.ClusterClient:
				if tc.want != "cluster" {
					t.Fatalf("got cluster client, want %s", tc.want)
				}
				if got := cc.Options().Addrs; !equal(got, tc.addrs) {
					t.Fatalf("addrs = %v, want %v", got, tc.addrs)
				}
			case *redis.Client:
				if tc.want != "client" {
					t.Fatalf("got client, want %s", tc.want)
				}
				if tc.addrs != nil && cc.Options().Addr != tc.addrs[0] {
					t.Fatalf("addr = %v, want %v", cc.Options().Addr, tc.addrs[0])
				}
			default:
				t.Fatalf("unexpected client type %T", c)
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"redis://u:secret@h:1/0":                  "redis://u:xxxxx@h:1/0",
		"redis://h:1":                             "redis://h:1",
		"redis+sentinel://m@h1,h2":                "redis+sentinel://m@h1,h2",
		"redis+sentinel://u:secret@m@h1,h2?x=1":   "redis+sentinel://u:xxxxx@m@h1,h2?x=1",
		"redis+cluster://:secret@h1:1,h2:2?a=b@c": "redis+cluster://:xxxxx@h1:1,h2:2?a=b@c",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenMemoryExpiresKeys(t *testing.T) {
	ctx := context.Background()
	c, closeFn, err := Open(ctx, "", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if err := c.Set(ctx, "k", "v", 200*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for c.Exists(ctx, "k").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("key with a 200ms TTL still exists after 3s: miniredis clock is not advancing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	if err := closeFn(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

func TestKeysRejectBraces(t *testing.T) {
	if _, err := NewKeys("a{b"); err == nil {
		t.Fatal("NewKeys accepted a prefix with a brace")
	}
	k, err := NewKeys("p:")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.Device("d1"), "p:{dev:d1}:dev"; got != want {
		t.Fatalf("Device = %q, want %q", got, want)
	}
}
