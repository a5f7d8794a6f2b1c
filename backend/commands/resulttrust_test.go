package commands

import (
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
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
	h.RunFleet(2)
	write := h.submit("d1", `{"action":"write_register","target_register":"export_power","value":40}`)
	read := h.submit("d1", `{"action":"read_register","target_register":"export_power"}`)
	ping := h.submit("d1", `{"action":"ping"}`)

	send := func(t *testing.T, r topics.CommandResult, eventKind string) backend.Event {
		t.Helper()
		return h.With(t).Uplink("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &r}, eventKind)
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
