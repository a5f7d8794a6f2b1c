// Package redistest gives tests a connection to the throwaway Redis that
// scripts/test.sh starts, with a key prefix of their own so that parallel
// test packages never collide. It never runs FLUSHDB: at cleanup it deletes
// only the keys under the test's prefix.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ecowatt/ecowatt/backend/store"
)

// EnvURL is the variable scripts/test.sh sets. scripts/test-scale.sh sets
// it to a Redis Cluster (redis+cluster://h1,h2,h3) to run the Redis tests
// there as well.
const EnvURL = "ECOWATT_TEST_REDIS_URL"

// Client connects to $ECOWATT_TEST_REDIS_URL and returns the client and a
// unique key prefix. It skips the test when the variable is unset, unless
// CI=true, where it fails instead.
func Client(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	raw := os.Getenv(EnvURL)
	if raw == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set and CI=true: run the tests with scripts/test.sh", EnvURL)
		}
		t.Skipf("%s not set; run scripts/test.sh for the Redis tests", EnvURL)
	}
	c, err := NewClient(raw)
	if err != nil {
		t.Fatalf("%s: %v", EnvURL, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		t.Fatalf("ping test redis: %v", err)
	}
	prefix := Prefix(t)
	t.Cleanup(func() {
		Clean(t, c, prefix)
		c.Close()
	})
	return c, prefix
}

// NewClient connects to redis://... or, for a Redis Cluster,
// redis+cluster://host1:port1,host2:port2.
func NewClient(raw string) (redis.UniversalClient, error) {
	if rest, ok := strings.CutPrefix(raw, "redis+cluster://"); ok {
		addrs := strings.Split(strings.TrimSuffix(rest, "/"), ",")
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs}), nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(opt), nil
}

// Prefix returns a fresh key prefix naming the test, e.g. "t:TestFoo:3fa2c1:".
func Prefix(t testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := strings.Map(func(r rune) rune {
		switch r {
		case '{', '}', '*', '?', '[', ']', ' ', '\\':
			return '_'
		}
		return r
	}, t.Name())
	return "t:" + name + ":" + hex.EncodeToString(b[:]) + ":"
}

// Keys lists every key under prefix.
func Keys(t testing.TB, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	var mu sync.Mutex // guards keys
	var keys []string
	ctx := context.Background()
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		it := c.Scan(ctx, 0, store.GlobEscape(prefix)+"*", 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			keys = append(keys, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return scan(ctx, n) })
	} else {
		err = scan(ctx, c)
	}
	if err != nil {
		t.Fatalf("scan %s*: %v", prefix, err)
	}
	return keys
}

// Clean deletes every key under prefix.
func Clean(t testing.TB, c redis.UniversalClient, prefix string) {
	t.Helper()
	ctx := context.Background()
	for _, k := range Keys(t, c, prefix) {
		if err := c.Del(ctx, k).Err(); err != nil {
			t.Errorf("cleanup: del %s: %v", k, err)
		}
	}
}
