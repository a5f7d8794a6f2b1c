package commands

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// harness is the shared fleet harness with a commands Service.
type harness struct {
	*fleettest.Harness
	svc *Service
	cfg Config
}

// newHarness builds a backend on the test Redis and a real broker, and
// a commands Service on a fake clock (not running: tests drive deliver and
// sweep themselves unless they call Run).
func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{Harness: fleettest.New(t, fleettest.Options{})}
	h.cfg = Config{
		Redis: h.Redis, Keys: h.Keys, Fleet: h.Fleet, Now: h.Clock.Now, Logger: h.Log,
		ResultTimeout: time.Minute, ResendAfter: 10 * time.Second, SweepInterval: 20 * time.Millisecond,
	}
	h.svc = h.newService()
	return h
}

// newService builds another Service on h.cfg (which leaves Registerer
// nil: each gets a metrics registry of its own).
func (h *harness) newService() *Service { return fleettest.Build(h.T, New, h.cfg) }

// device provisions id; online marks it online.
func (h *harness) device(id string, online bool) {
	h.T.Helper()
	h.Device(id)
	h.setOnline(id, online)
}

func (h *harness) setOnline(id string, online bool) {
	h.T.Helper()
	v := "0"
	if online {
		v = "1"
	}
	h.SetDevice(id, "online", v)
}

func (h *harness) submit(dev, doc string) Command {
	h.T.Helper()
	c, err := h.svc.Parse([]byte(doc))
	if err != nil {
		h.T.Fatalf("parse %s: %v", doc, err)
	}
	cmd, created, err := h.svc.Submit(h.Ctx, dev, "tester", c)
	if err != nil || !created {
		h.T.Fatalf("submit %s: created=%v err=%v", doc, created, err)
	}
	return cmd
}

func (h *harness) get(cid string) Command {
	h.T.Helper()
	c, err := h.svc.Get(h.Ctx, cid)
	if err != nil {
		h.T.Fatalf("get %s: %v", cid, err)
	}
	return c
}

func (h *harness) wantState(cid, want string) Command {
	h.T.Helper()
	c := h.get(cid)
	if c.State != want {
		h.T.Fatalf("command %s is %s, want %s (%+v)", cid, c.State, want, c)
	}
	return c
}

// result hands the service a command_result from dev.
func (h *harness) result(dev string, r topics.CommandResult) error {
	b, _ := json.Marshal(topics.CommandResultBody{CommandResult: &r})
	return h.svc.HandleResult(h.Ctx, dev, envelope.Message{Body: b})
}

// downlinks opens the commands sent to dev, in order.
func (h *harness) downlinks(dev string) []topics.Command {
	h.T.Helper()
	return fleettest.Downlinks(h.Harness, dev, topics.KindCommand, func(body []byte) (topics.Command, error) {
		var b topics.CommandBody
		if err := json.Unmarshal(body, &b); err != nil || b.Command == nil {
			return topics.Command{}, errors.Join(errors.New("no command"), err)
		}
		return *b.Command, nil
	})
}

// events returns the command events published for dev, decoded.
func (h *harness) events(dev string) []map[string]any {
	h.T.Helper()
	return h.Events(dev, topics.EventCommand)
}
