package config

import (
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
	h.device("d1")
	h.birth("d1", 0, topics.DefaultConfig())
	h.set("d1", `{"sampling_interval":3}`)
	cfgKeys := []string{h.s.cfgKey("d1"), h.s.histKey("d1"), h.s.pendingKey()}
	dump := func() []string {
		var out []string
		for _, k := range cfgKeys {
			v, _ := h.rdb.Dump(h.ctx, k).Result()
			out = append(out, v)
		}
		return out
	}
	before := dump()
	fake := topics.ConfigAck{Version: 999, Accepted: []topics.FieldChange{{Parameter: topics.ParamSamplingInterval, Old: 5, New: 60}},
		Rejected: []topics.FieldRejected{}, Unchanged: []string{}}
	ev := h.uplink("d1", topics.KindConfigAck, ackBody(fake), topics.EventSecurity)
	if !strings.Contains(string(ev.Data), backend.ReasonInvalidBody) || !strings.Contains(string(ev.Data), "999") {
		t.Fatalf("security event: %s", ev.Data)
	}
	if !slices.Equal(before, dump()) {
		t.Fatal("an ack of a version never issued changed the config state")
	}
	// The genuine ack still lands.
	ok := topics.ConfigAck{Version: 1, Accepted: []topics.FieldChange{{Parameter: topics.ParamSamplingInterval, Old: 5, New: 3}},
		Rejected: []topics.FieldRejected{}, Unchanged: []string{topics.ParamUploadInterval, topics.ParamRegisters}}
	h.uplink("d1", topics.KindConfigAck, ackBody(ok), topics.EventConfig)
	st := h.get("d1")
	if st.Pending || st.Reported == nil || st.Reported.Version != 1 || st.Reported.SamplingInterval != 3 {
		t.Fatalf("after the genuine ack: %+v", st)
	}
}
