package commands

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

func envelopeMsg(body string) envelope.Message { return envelope.Message{Body: []byte(body)} }

// TestListPaging: history is newest first and pages by ?before=.
func TestListPaging(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	var ids []string
	for range 5 {
		ids = append(ids, h.submit("dev-1", `{"action":"ping"}`).ID)
	}
	var got []string
	before := ""
	for page := 0; page < 5; page++ {
		p, err := h.svc.List(h.Ctx, "dev-1", 2, before)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range p.Commands {
			got = append(got, c.ID)
		}
		if p.Next == "" {
			break
		}
		before = p.Next
	}
	want := fmt.Sprint([]string{ids[4], ids[3], ids[2], ids[1], ids[0]})
	if fmt.Sprint(got) != want {
		t.Fatalf("pages %v, want %v", got, want)
	}
	cases := []struct {
		name, dev string
		limit     int
		before    string
		code      string
	}{
		{"unknown device", "nobody", 0, "", backend.CodeNotFound},
		{"limit too big", "dev-1", MaxPageSize + 1, "", backend.CodeInvalid},
		{"negative limit", "dev-1", -1, "", backend.CodeInvalid},
		{"unknown cursor", "dev-1", 0, "nope", backend.CodeInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.svc.List(h.Ctx, tc.dev, tc.limit, tc.before)
			if backend.ErrorCode(err) != tc.code {
				t.Fatalf("err %v, want %s", err, tc.code)
			}
		})
	}
}

// TestRequestIDIdempotent: a repeated request_id (a redelivered ops
// message, a retried HTTP call) returns the first command, queues nothing.
func TestRequestIDIdempotent(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	a := h.submit("dev-1", `{"action":"ping","request_id":"once"}`)
	before := h.Snapshot()
	c, _ := h.svc.Parse([]byte(`{"action":"ping","request_id":"once"}`))
	b, created, err := h.svc.Submit(h.Ctx, "dev-1", "tester", c)
	if err != nil || created || b.ID != a.ID {
		t.Fatalf("second submit: %+v created=%v err=%v", b, created, err)
	}
	h.AssertUnchanged(t, before)
}

// TestRunDeliversAfterRestart: commands queued by one backend instance
// (never running) are delivered by a fresh instance's Run, found by its
// first sweep; a birth makes it send at once.
func TestRunDeliversAfterRestart(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	h.device("dev-2", false)
	a := h.submit("dev-1", `{"action":"ping"}`)
	b := h.submit("dev-2", `{"action":"ping"}`)

	s2 := h.newService()
	h.Run("commands run", s2.Run)
	waitState(t, s2, a.ID, StateSent)
	if s, _ := s2.Get(h.Ctx, b.ID); s.State != StateQueued {
		t.Fatalf("offline device's command is %s", s.State)
	}
	if err := s2.Run(context.Background()); err == nil {
		t.Error("second Run accepted")
	}
	h.setOnline("dev-2", true)
	s2.HandleBirth(h.Ctx, "dev-2", envelopeMsg(`{"online":true}`))
	waitState(t, s2, b.ID, StateSent)
}

// TestOpsOverBus: a command published on the ops topic goes through the
// backend to the queue and out to the device.
func TestOpsOverBus(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	if err := h.Fleet.EnsureOperator(h.Ctx, "alice", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	h.svc.Attach()
	h.Run("backend run", h.Fleet.Run)
	h.Run("commands run", h.svc.Run)
	h.Bus.WaitSubscribed(t, 2, 5*time.Second)
	h.Bus.Deliver(backend.Message{Topic: topics.Ops("dev-1", topics.KindCommand), Username: "alice", Payload: []byte(`{"action":"read_register","target_register":"export_power","request_id":"q1"}`)})
	h.Bus.WaitSent(t, topics.DeviceDown("dev-1", topics.KindCommand), 1, 5*time.Second)
	if d := h.downlinks("dev-1"); len(d) != 1 || d[0].Action != topics.ActionReadRegister || d[0].TargetRegister != "export_power" {
		t.Fatalf("downlinks %+v, want one read_register of export_power", d)
	}
}

func waitState(t *testing.T, s *Service, cid, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := s.Get(context.Background(), cid)
		if err == nil && c.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("command %s is %s (%v), want %s", cid, c.State, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
