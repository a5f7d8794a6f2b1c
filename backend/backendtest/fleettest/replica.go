package fleettest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ecowatt/ecowatt/backend/redistest"
)

// Build calls newFn(cfg), a service's New, and fails the test on an error.
func Build[C, S any](t testing.TB, newFn func(C) (S, error), cfg C) S {
	t.Helper()
	s, err := newFn(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Replica is one replica of a service that a test runs on a Redis
// connection of its own, so that closing Redis fakes a crash: no lease
// renewal, no release.
type Replica struct {
	Name  string
	Redis redis.UniversalClient

	cancel context.CancelFunc // nil until Start and after Stop
	done   chan struct{}
}

// NewReplica opens the replica's Redis connection, closed when the test
// ends; build the service on it, then Start it.
func (h *Harness) NewReplica(name string) *Replica {
	h.T.Helper()
	rdb, err := redistest.NewClient(os.Getenv(redistest.EnvURL))
	if err != nil {
		h.T.Fatal(err)
	}
	r := &Replica{Name: name, Redis: rdb}
	t := h.T
	t.Cleanup(func() { r.Stop(t); rdb.Close() })
	return r
}

// Start runs run (the service's Run) until Stop or the end of the test.
func (r *Replica) Start(run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		run(ctx) // a crashed replica's error is expected: no check
	}()
}

// Stop cancels the replica's Run and waits for it to return; a second
// Stop does nothing.
func (r *Replica) Stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case <-r.done:
	case <-time.After(Wait):
		t.Errorf("replica %s did not stop within %v", r.Name, Wait)
	}
}
