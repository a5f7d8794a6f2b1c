// Package backendtest holds what the backend packages' tests share: a real
// embedded broker exposed as a backend.Bus, a key vault, and snapshots of
// the Redis keys under a test's prefix. It is imported only by tests. The
// fake clock is devicesim/clock.Fake; the harness of the services' tests,
// which needs a backend.Service, is in the subpackage fleettest.
//
// The package does not import backend, so that backend's own (internal)
// tests can use it: the bus is generic over the message type, which must
// have the fields of backend.Message (and broker.Message). Write
// backendtest.Bus[backend.Message](t), or Bus[Message](t) inside backend.
package backendtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// Message is the shape of backend.Message and broker.Message.
type Message interface {
	~struct {
		Topic    string
		Payload  []byte
		Username string
	}
}

// TestBus is a started broker.Server, seen as a backend.Bus, that also
// records what is published through it.
type TestBus[M Message] struct {
	t   testing.TB
	srv *broker.Server

	deliver sync.Mutex // held by Deliver: one injected message in flight

	mu      sync.Mutex // guards the fields below
	sent    []M
	subs    int
	pending *broker.Message // the message Deliver is publishing, if any
	changed chan struct{}   // closed and replaced when sent or subs grows
}

// Bus starts a broker on a loopback port for the test and returns it as a
// bus; it is closed when the test ends. No device or operator can log in
// over the network: tests talk to it in-process.
func Bus[M Message](t testing.TB) *TestBus[M] {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := broker.New(broker.Config{MQTTListener: ln, Devices: noDevices{}, Logger: zerolog.Nop()})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		srv.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return &TestBus[M]{t: t, srv: srv, changed: make(chan struct{})}
}

// Server is the broker behind the bus.
func (b *TestBus[M]) Server() *broker.Server { return b.srv }

// Publish publishes through the broker and records the message.
func (b *TestBus[M]) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	if err := b.srv.Publish(ctx, topic, payload, qos); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = append(b.sent, M(broker.Message{Topic: topic, Payload: bytes.Clone(payload)}))
	b.notify()
	return nil
}

// Subscribe subscribes h on the broker. Like every in-process
// subscription, h runs in the publisher's goroutine.
func (b *TestBus[M]) Subscribe(filter string, h func(M)) error {
	err := b.srv.Subscribe(filter, func(m broker.Message) {
		if m.Username == "" {
			m.Username = b.injectedUsername(m)
		}
		h(M(m))
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs++
	b.notify()
	return nil
}

// Deliver injects m as if its Username had published it: m goes through
// the broker and reaches the subscribers through mochi's inline
// subscription path before Deliver returns. It is not recorded by Sent.
//
// An in-process publish has no client, so the broker reports no
// username; this is the one place the bus departs from the broker:
// the subscribers see m.Username, restored on the way out. (A real client
// could not publish the mismatched usernames the tests need: the ACL
// refuses them before the backend's own check.)
func (b *TestBus[M]) Deliver(m M) {
	b.t.Helper()
	msg := broker.Message(m)
	b.deliver.Lock()
	defer b.deliver.Unlock()
	b.mu.Lock()
	b.pending = &msg
	b.mu.Unlock()
	err := b.srv.Publish(context.Background(), msg.Topic, msg.Payload, 1)
	b.mu.Lock()
	b.pending = nil
	b.mu.Unlock()
	if err != nil {
		b.t.Errorf("deliver %s: %v", msg.Topic, err)
	}
}

// injectedUsername is the username Deliver is injecting m with, if m is
// that message.
func (b *TestBus[M]) injectedUsername(m broker.Message) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.pending; p != nil && p.Topic == m.Topic && bytes.Equal(p.Payload, m.Payload) {
		return p.Username
	}
	return ""
}

// Sent returns the messages published so far whose topic starts with
// prefix (a whole topic selects that topic: no kind is a prefix of another).
func (b *TestBus[M]) Sent(prefix string) []M {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sentLocked(prefix)
}

func (b *TestBus[M]) sentLocked(prefix string) []M {
	var out []M
	for _, m := range b.sent {
		if strings.HasPrefix(broker.Message(m).Topic, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// Reset forgets what was published so far.
func (b *TestBus[M]) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = nil
}

// WaitSent waits until at least n messages under prefix have been
// published and returns them all; it fails the test after timeout.
func (b *TestBus[M]) WaitSent(t testing.TB, prefix string, n int, timeout time.Duration) []M {
	t.Helper()
	var out []M
	if !b.wait(timeout, func() bool { out = b.sentLocked(prefix); return len(out) >= n }) {
		t.Fatalf("%d messages published under %s after %v, want %d", len(out), prefix, timeout, n)
	}
	return out
}

// WaitSubscribed waits until n subscriptions have been made (a Service
// subscribes when it starts to run); it fails the test after timeout.
func (b *TestBus[M]) WaitSubscribed(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	if !b.wait(timeout, func() bool { return b.subs >= n }) {
		t.Fatalf("fewer than %d subscriptions after %v", n, timeout)
	}
}

// wait reports whether done, called with b.mu held, became true in time.
func (b *TestBus[M]) wait(timeout time.Duration, done func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		b.mu.Lock()
		ok, ch := done(), b.changed
		b.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			b.mu.Lock()
			defer b.mu.Unlock()
			return done()
		}
	}
}

// notify wakes the waiters; b.mu is held.
func (b *TestBus[M]) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// noDevices is the broker's DeviceAuth: no device is provisioned.
type noDevices struct{}

func (noDevices) DeviceKeys(_ context.Context, id string) (*envelope.Keys, error) {
	return nil, fmt.Errorf("device %q: %w", id, broker.ErrUnknownDevice)
}

// Vault returns a key vault with a random master key.
func Vault(t testing.TB) *keyvault.Vault {
	t.Helper()
	master := make([]byte, keyvault.KeySize)
	if _, err := rand.Read(master); err != nil {
		t.Fatal(err)
	}
	v, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Snapshot dumps every key under prefix (values serialised by DUMP).
func Snapshot(t testing.TB, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, k := range redistest.Keys(t, rdb, prefix) {
		v, err := rdb.Dump(ctx, k).Result()
		if errors.Is(err, redis.Nil) { // expired since the scan
			continue
		}
		if err != nil {
			t.Fatalf("dump %s: %v", k, err)
		}
		out[k] = v
	}
	return out
}

// AssertUnchanged fails the test for every key under prefix that was
// created, changed or deleted since Snapshot returned before. Keys ending
// with one of ignore are left out: logs such as the audit and security
// streams, which a rejected request does append to.
func AssertUnchanged(t testing.TB, rdb redis.UniversalClient, prefix string, before map[string]string, ignore ...string) {
	t.Helper()
	ignored := func(k string) bool {
		for _, s := range ignore {
			if strings.HasSuffix(k, s) {
				return true
			}
		}
		return false
	}
	after := Snapshot(t, rdb, prefix)
	for k, v := range after {
		if ignored(k) {
			continue
		}
		if bv, ok := before[k]; !ok {
			t.Errorf("key %s was created", k)
		} else if bv != v {
			t.Errorf("key %s changed", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok && !ignored(k) {
			t.Errorf("key %s was deleted", k)
		}
	}
}
