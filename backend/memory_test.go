package backend

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// TestZeroSetupStore runs the main flows on the in-process store that
// `ecowatt serve` uses without --redis, so that every script works there.
func TestZeroSetupStore(t *testing.T) {
	ctx := context.Background()
	rdb, closeStore, err := store.Open(ctx, "", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore()
	vault, err := keyvault.Open(t.TempDir(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bus := backendtest.Bus[Message](t)
	s, err := New(Config{Redis: rdb, Vault: vault, Bus: bus, Logger: zerolog.New(zerolog.NewTestWriter(t)),
		Registerer: prometheus.NewRegistry(), BcryptCost: bcrypt.MinCost, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	bus.WaitSubscribed(t, 2, 5*time.Second)

	psk, err := s.Provision(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Provision(ctx, "m1"); ErrorCode(err) != CodeConflict {
		t.Fatalf("duplicate = %v", err)
	}
	k, _ := envelope.DeriveKeys(psk)
	events, stop := s.SubscribeEvents(EventFilter{Device: "m1"})
	defer stop()
	next := func() Event {
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return Event{}
		}
	}
	topic := topics.DeviceUp("m1", topics.KindBirth)
	birth, _ := envelope.Seal(&k, topic, 5, time.Now(), []byte(birthBody), false, nil)
	bus.Deliver(Message{Topic: topic, Payload: birth})
	if ev := next(); ev.Kind != topics.EventPresence || ev.ID == "" {
		t.Fatalf("birth: %+v", ev)
	}
	bus.Deliver(Message{Topic: topic, Payload: birth})
	if ev := next(); ev.Kind != topics.EventSecurity || !strings.Contains(string(ev.Data), ReasonReplay) {
		t.Fatalf("replay: %+v %s", ev, ev.Data)
	}
	if d, _ := s.Device(ctx, "m1"); !d.Online {
		t.Fatal("not online after birth")
	}
	bus.Deliver(Message{Topic: topic, Payload: []byte(`{"online":false}`)})
	if ev := next(); !strings.Contains(string(ev.Data), `"online":false`) {
		t.Fatalf("will: %s", ev.Data)
	}
	if err := s.Send(ctx, "m1", topics.KindCommand, map[string]string{"x": "y"}); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureOperator(ctx, "root", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if role, err := s.AuthenticateOperator(ctx, "root", "pw"); err != nil || role != topics.RoleAdmin {
		t.Fatalf("operator: %q %v", role, err)
	}
	if evs, err := s.Events(ctx, "m1", 10); err != nil || len(evs) != 3 {
		t.Fatalf("Events = %d, %v; want 3", len(evs), err)
	}
}
