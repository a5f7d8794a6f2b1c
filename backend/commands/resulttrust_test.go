package commands

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestResultValueChecked: a command_result's value must fit the command:
// a write_register success reports exactly the value written (a failure
// any raw value of the register), a read_register value lies in the
// register's raw range, reboot and ping carry none. Anything else, sent
// as a raw signed uplink through the broker, is a security event and the
// command is unchanged; the genuine result still lands.
func TestResultValueChecked(t *testing.T) {
	h := newHarness(t)
	h.device("d1", false)
	h.svc.Attach()
	h.run("backend run", h.fleet.Run)
	h.bus.WaitSubscribed(t, 2, 5*time.Second)
	write := h.submit("d1", `{"action":"write_register","target_register":"export_power","value":40}`)
	read := h.submit("d1", `{"action":"read_register","target_register":"export_power"}`)
	ping := h.submit("d1", `{"action":"ping"}`)

	var nonce uint64
	send := func(t *testing.T, r topics.CommandResult, eventKind string) backend.Event {
		t.Helper()
		raw, _ := json.Marshal(topics.CommandResultBody{CommandResult: &r})
		topic := topics.DeviceUp("d1", topics.KindCommandResult)
		nonce++
		k := h.keys["d1"]
		env, err := envelope.Seal(&k, topic, nonce, time.Now(), raw, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		ch, cancel := h.fleet.SubscribeEvents(backend.EventFilter{Device: "d1", Kind: eventKind})
		defer cancel()
		h.bus.Deliver(backend.Message{Topic: topic, Payload: env, Username: "d1"})
		select {
		case ev := <-ch:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event after %s", eventKind, raw)
			return backend.Event{}
		}
	}
	v := func(n int) *int { return &n }
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, tc := range []struct {
		name string
		r    topics.CommandResult
	}{
		{"write success above the range", topics.CommandResult{ID: write.ID, Status: topics.ResultSuccess, Value: v(250), ExecutedAt: now}},
		{"write success other than written", topics.CommandResult{ID: write.ID, Status: topics.ResultSuccess, Value: v(39), ExecutedAt: now}},
		{"write success without a value", topics.CommandResult{ID: write.ID, Status: topics.ResultSuccess, ExecutedAt: now}},
		{"write failure beyond the raw range", topics.CommandResult{ID: write.ID, Status: topics.ResultFailed, Value: v(70000), Error: "x", ExecutedAt: now}},
		{"read negative", topics.CommandResult{ID: read.ID, Status: topics.ResultSuccess, Value: v(-1), ExecutedAt: now}},
		{"read above the range", topics.CommandResult{ID: read.ID, Status: topics.ResultSuccess, Value: v(101), ExecutedAt: now}},
		{"ping with a value", topics.CommandResult{ID: ping.ID, Status: topics.ResultSuccess, Value: v(5), ExecutedAt: now}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.get(tc.r.ID)
			ev := send(t, tc.r, topics.EventSecurity)
			if !strings.Contains(string(ev.Data), backend.ReasonInvalidBody) {
				t.Fatalf("security event %s", ev.Data)
			}
			if after := h.get(tc.r.ID); after.State != before.State || after.Result != nil {
				t.Fatalf("command changed: %+v", after)
			}
		})
	}
	send(t, topics.CommandResult{ID: write.ID, Status: topics.ResultSuccess, Value: v(40), ExecutedAt: now}, topics.EventCommand)
	send(t, topics.CommandResult{ID: read.ID, Status: topics.ResultSuccess, Value: v(40), ExecutedAt: now}, topics.EventCommand)
	send(t, topics.CommandResult{ID: ping.ID, Status: topics.ResultSuccess, ExecutedAt: now}, topics.EventCommand)
	for _, id := range []string{write.ID, read.ID, ping.ID} {
		h.wantState(id, StateSucceeded)
	}
}
