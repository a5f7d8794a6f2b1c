package broker

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// observer records what the broker reports through Observe.
type observer struct {
	mu       sync.Mutex // guards the fields below
	conns    []string
	rejects  []Rejection
	disconns int
}

func (o *observer) DeviceConnected(_ context.Context, id string) (uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.conns = append(o.conns, id)
	return uint64(len(o.conns)), nil
}

func (o *observer) DeviceDisconnected(context.Context, string, uint64, string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.disconns++
	return nil
}

func (o *observer) reject(r Rejection) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rejects = append(o.rejects, r)
}

func (o *observer) counts() (conns, rejects int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.conns), len(o.rejects)
}

// TestObserve: presence and rejections set by Observe after New (how
// cmd/ecowatt wires the backend, which publishes through this broker) are
// reported once serving; Observe after Start is refused and changes
// nothing.
func TestObserve(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	auth := newFakeAuth(t, "d1")
	s, err := New(Config{MQTTListener: ln, Devices: auth, Operators: auth,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	o := &observer{}
	if err := s.Observe(o, o.reject); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	late := &observer{}
	if err := s.Observe(late, late.reject); err == nil {
		t.Fatal("Observe after Start succeeded")
	}
	tb := &testBroker{Server: s, auth: auth}
	tb.device(t, "d1")
	if _, err := connect(t, tb.clientOpts("d1", "d1", "v1.1.00")); err == nil {
		t.Fatal("connected with a wrong password")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		conns, rejects := o.counts()
		if conns >= 1 && rejects >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("observer saw %d connections and %d rejections, want 1 and 1", conns, rejects)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if conns, rejects := late.counts(); conns != 0 || rejects != 0 {
		t.Fatalf("the refused observer saw %d connections and %d rejections", conns, rejects)
	}
}
