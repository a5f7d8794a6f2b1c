package config

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
)

// TestAckOfVersionNeverIssued: an ack for a version above the desired one
// (never issued) used to be stored, moving the reported version to 999 so
// that every later genuine ack counted as older and the reported config
// froze. It is a security event and changes nothing.
func TestAckOfVersionNeverIssued(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	h.birth("d1", 0, topics.DefaultConfig())
	h.set("d1", `{"sampling_interval":3}`)
	// The state an ack may change (delivery bookkeeping moves on its own,
	// concurrently: it is left out), the history and the pending index.
	dump := func() []string {
		st := h.get("d1")
		st.Delivery = nil
		b, _ := json.Marshal(st)
		hist, _ := h.Redis.Dump(h.Ctx, h.s.histKey("d1")).Result()
		pend, _ := h.Redis.Dump(h.Ctx, h.s.pendingKey()).Result()
		return []string{string(b), hist, pend}
	}
	before := dump()
	fake := topics.ConfigAck{Version: 999, Accepted: []topics.FieldChange{{Parameter: topics.ParamSamplingInterval, Old: 5, New: 60}},
		Rejected: []topics.FieldRejected{}, Unchanged: []string{}}
	ev := h.Uplink("d1", topics.KindConfigAck, ackBody(fake), topics.EventSecurity)
	if !strings.Contains(string(ev.Data), backend.ReasonInvalidBody) || !strings.Contains(string(ev.Data), "999") {
		t.Fatalf("security event: %s", ev.Data)
	}
	if after := dump(); !slices.Equal(before, after) {
		t.Fatalf("an ack of a version never issued changed the config state:\n%v\n%v", before, after)
	}
	// The genuine ack still lands.
	ok := topics.ConfigAck{Version: 1, Accepted: []topics.FieldChange{{Parameter: topics.ParamSamplingInterval, Old: 5, New: 3}},
		Rejected: []topics.FieldRejected{}, Unchanged: []string{topics.ParamUploadInterval, topics.ParamRegisters}}
	h.Uplink("d1", topics.KindConfigAck, ackBody(ok), topics.EventConfig)
	st := h.get("d1")
	if st.Pending || st.Reported == nil || st.Reported.Version != 1 || st.Reported.SamplingInterval != 3 {
		t.Fatalf("after the genuine ack: %+v", st)
	}
}
