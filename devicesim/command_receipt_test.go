package devicesim

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// isReceipt reports whether a command_result body is a receipt.
func isReceipt(body []byte) bool {
	var b topics.CommandResultBody
	return json.Unmarshal(body, &b) == nil && b.CommandResult != nil && b.CommandResult.Status == topics.ResultDelivered
}

// allResults returns every command_result so far, receipts included.
func (g *rig) allResults() []topics.CommandResult {
	g.t.Helper()
	topic := topics.DeviceUp(g.id, topics.KindCommandResult)
	g.b.mu.Lock()
	msgs := slices.Clone(g.b.msgs)
	g.b.mu.Unlock()
	var out []topics.CommandResult
	for _, m := range msgs {
		if m.topic != topic {
			continue
		}
		msg, err := envelope.Open(g.keys, topic, m.payload)
		if err != nil {
			g.t.Fatal(err)
		}
		var b topics.CommandResultBody
		if err := json.Unmarshal(msg.Body, &b); err != nil || b.CommandResult == nil {
			g.t.Fatalf("command result %s: %v", msg.Body, err)
		}
		out = append(out, *b.CommandResult)
	}
	return out
}

// TestCommandReceipt: a new command gets a "delivered" receipt before its
// result; a duplicate delivery gets only the stored result.
func TestCommandReceipt(t *testing.T) {
	g := newRig(t, "cmd-rcpt", 33)
	g.boot(nil)
	c := topics.Command{ID: "c-1", Action: topics.ActionPing, ExpiresAt: g.clk.Now().Add(time.Minute)}
	g.send(topics.KindCommand, cmdBody(c))
	g.result(1)
	g.send(topics.KindCommand, cmdBody(c))
	g.result(2)
	var got []string
	for _, r := range g.allResults() {
		if r.ID != "c-1" {
			t.Fatalf("result for %s", r.ID)
		}
		s := r.Status
		if r.Duplicate {
			s += "(dup)"
		}
		got = append(got, s)
	}
	want := []string{topics.ResultDelivered, topics.ResultSuccess, topics.ResultSuccess + "(dup)"}
	if !slices.Equal(got, want) {
		t.Fatalf("results %v, want %v", got, want)
	}
}
