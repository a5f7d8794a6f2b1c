package config

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSetBadInput: every bad document is refused with a CodeInvalid error
// naming the field, and creates no version, sends nothing and changes no
// key. An unknown device is CodeNotFound.
func TestSetBadInput(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	h.set("d1", `{"sampling_interval":10,"upload_interval":30}`) // version 1, so there is state to keep
	cases := []struct {
		name, dev, patch string
		code, field      string
	}{
		{"sampling below range", "d1", `{"sampling_interval":0}`, backend.CodeInvalid, "sampling_interval"},
		{"sampling above range", "d1", `{"sampling_interval":301}`, backend.CodeInvalid, "sampling_interval"},
		{"sampling negative", "d1", `{"sampling_interval":-5}`, backend.CodeInvalid, "sampling_interval"},
		{"upload above range", "d1", `{"upload_interval":3601}`, backend.CodeInvalid, "upload_interval"},
		{"upload below sampling in the patch", "d1", `{"sampling_interval":20,"upload_interval":10}`, backend.CodeInvalid, "upload_interval"},
		{"upload below current sampling", "d1", `{"upload_interval":5}`, backend.CodeInvalid, "upload_interval"},
		{"sampling above current upload", "d1", `{"sampling_interval":60}`, backend.CodeInvalid, "sampling_interval"},
		{"upload not a multiple", "d1", `{"upload_interval":35}`, backend.CodeInvalid, "upload_interval"},
		{"unknown register", "d1", `{"registers":["voltage","flux"]}`, backend.CodeInvalid, "registers"},
		{"duplicate registers", "d1", `{"registers":["voltage","voltage"]}`, backend.CodeInvalid, "registers"},
		{"empty register list", "d1", `{"registers":[]}`, backend.CodeInvalid, "registers"},
		{"too many registers", "d1", `{"registers":["voltage","current","frequency","pv1_voltage","pv2_voltage","pv1_current","pv2_current","temperature","export_power","output_power","voltage"]}`, backend.CodeInvalid, "registers"},
		{"interval as string", "d1", `{"sampling_interval":"10"}`, backend.CodeInvalid, "sampling_interval"},
		{"interval as float", "d1", `{"sampling_interval":2.5}`, backend.CodeInvalid, "sampling_interval"},
		{"interval null", "d1", `{"upload_interval":null}`, backend.CodeInvalid, "upload_interval"},
		{"registers as string", "d1", `{"registers":"voltage"}`, backend.CodeInvalid, "registers"},
		{"registers with a number", "d1", `{"registers":["voltage",1]}`, backend.CodeInvalid, "registers"},
		{"unknown field", "d1", `{"sampling_interval":10,"colour":"red"}`, backend.CodeInvalid, "colour"},
		{"version given", "d1", `{"version":9,"sampling_interval":10}`, backend.CodeInvalid, "version"},
		{"repeated field", "d1", `{"sampling_interval":10,"sampling_interval":20}`, backend.CodeInvalid, "sampling_interval"},
		{"empty object", "d1", `{}`, backend.CodeInvalid, ""},
		{"array", "d1", `[1,2]`, backend.CodeInvalid, ""},
		{"malformed JSON", "d1", `{"sampling_interval":`, backend.CodeInvalid, ""},
		{"empty body", "d1", ``, backend.CodeInvalid, ""},
		{"oversized", "d1", `{"registers":["` + strings.Repeat("v", 5000) + `"]}`, backend.CodeInvalid, ""},
		{"unknown device", "nope", `{"sampling_interval":10}`, backend.CodeNotFound, "id"},
		{"unknown device and bad body", "nope", `{"sampling_interval":0}`, backend.CodeNotFound, "id"},
		{"invalid device id", "bad/id", `{"sampling_interval":10}`, backend.CodeNotFound, "id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			versions := testutil.ToFloat64(h.s.m.versions)
			sent := len(h.downlinks("d1"))
			_, err := h.s.Set(h.Ctx, tc.dev, []byte(tc.patch), Who{By: "tester", Via: ViaHTTP})
			var be *backend.Error
			if !errors.As(err, &be) || be.Code != tc.code || be.Field != tc.field {
				t.Fatalf("Set(%s) = %v; want code %s field %q", tc.patch, err, tc.code, tc.field)
			}
			if msg, _ := backend.ErrorMessage(err); msg == "" || msg == tc.code {
				t.Errorf("error has no clear message: %v", err)
			}
			h.AssertUnchanged(t, before)
			if got := testutil.ToFloat64(h.s.m.versions); got != versions {
				t.Errorf("versions metric %v -> %v", versions, got)
			}
			if n := len(h.downlinks("d1")); n != sent {
				t.Errorf("%d config messages sent", n-sent)
			}
			if st := h.get("d1"); st.Desired.Version != 1 || st.Desired.SamplingInterval != 10 || st.Desired.UploadInterval != 30 {
				t.Errorf("desired changed: %+v", st.Desired)
			}
		})
	}
}

func TestSetVersionsAndHistory(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")

	st := h.get("d1")
	if st.Desired.Version != 0 || !st.Desired.Equal(topics.DefaultConfig()) || st.Pending || st.Reported != nil || st.LastAck != nil {
		t.Fatalf("fresh device state: %+v", st)
	}

	r := h.set("d1", `{"sampling_interval":10,"upload_interval":30}`)
	want := topics.DefaultConfig()
	want.SamplingInterval, want.UploadInterval = 10, 30
	if !r.Changed || r.Desired.Version != 1 || !r.Desired.Equal(want) || !r.Pending {
		t.Fatalf("first set: %+v", r)
	}
	if len(r.Changes) != 2 || r.Changes[0].Parameter != topics.ParamSamplingInterval {
		t.Errorf("changes: %+v", r.Changes)
	}

	r = h.set("d1", `{"registers":["voltage","current"]}`)
	want.Registers = []string{"voltage", "current"}
	if !r.Changed || r.Desired.Version != 2 || !r.Desired.Equal(want) || r.Desired.UpdatedBy != "tester" || r.Desired.Via != ViaHTTP {
		t.Fatalf("second set: %+v", r)
	}

	// The same values again: no version, nothing sent.
	r = h.set("d1", `{"registers":["voltage","current"],"sampling_interval":10}`)
	if r.Changed || r.Desired.Version != 2 {
		t.Fatalf("no-op set: %+v", r)
	}

	// Each version was sent once, complete.
	ups := h.downlinks("d1")
	if len(ups) != 2 || ups[1].Version != 2 || *ups[1].SamplingInterval != 10 || *ups[1].UploadInterval != 30 ||
		!slices.Equal(ups[1].Registers, want.Registers) {
		t.Fatalf("downlinks: %+v", ups)
	}
	if got := testutil.ToFloat64(h.s.m.versions); got != 2 {
		t.Errorf("versions metric = %v, want 2", got)
	}

	hist, err := h.s.History(h.Ctx, "d1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].Version != 2 || hist[1].Version != 1 || hist[0].Type != EntryDesired ||
		hist[0].By != "tester" || hist[0].Via != ViaHTTP || len(hist[0].Changes) != 1 ||
		hist[0].Changes[0].Parameter != topics.ParamRegisters || hist[0].Config == nil {
		t.Fatalf("history: %+v", hist)
	}
	if _, err := h.s.History(h.Ctx, "nope", 0); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("history of unknown device: %v", err)
	}
}

func TestAck(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	h.birth("d1", 0, topics.DefaultConfig())
	h.set("d1", `{"sampling_interval":10,"upload_interval":30,"registers":["voltage"]}`)

	// The device accepts the intervals and rejects the registers.
	ack := topics.ConfigAck{Version: 1,
		Accepted: []topics.FieldChange{
			{Parameter: topics.ParamSamplingInterval, Old: 5, New: 10},
			{Parameter: topics.ParamUploadInterval, Old: 15, New: 30},
		},
		Rejected:  []topics.FieldRejected{{Parameter: topics.ParamRegisters, Reason: "not wired"}},
		Unchanged: []string{},
	}
	ev := h.Uplink("d1", topics.KindConfigAck, ackBody(ack), topics.EventConfig)
	var data map[string]any
	json.Unmarshal(ev.Data, &data)
	if data["status"] != "acked" || data["result"] != AckPartial || data["pending"] != false {
		t.Fatalf("ack event: %s", ev.Data)
	}
	st := h.get("d1")
	wantRep := topics.DefaultConfig()
	wantRep.SamplingInterval, wantRep.UploadInterval = 10, 30
	if st.Pending || st.Reported == nil || st.Reported.Version != 1 || !st.Reported.Equal(wantRep) ||
		st.LastAck == nil || st.LastAck.Version != 1 || len(st.LastAck.Rejected) != 1 {
		t.Fatalf("state after ack: %+v", st)
	}
	if !slices.Equal(st.Drift, []string{topics.ParamRegisters}) {
		t.Errorf("drift = %v, want registers", st.Drift)
	}

	// The same ack again (idempotent redelivery) changes nothing but the
	// history.
	before := h.get("d1")
	ev = h.Uplink("d1", topics.KindConfigAck, ackBody(ack), topics.EventConfig)
	json.Unmarshal(ev.Data, &data)
	if data["duplicate"] != true {
		t.Errorf("repeated ack not flagged duplicate: %s", ev.Data)
	}
	after := h.get("d1")
	if !after.Reported.Equal(before.Reported.Config) || after.Pending || after.Desired.Version != 1 {
		t.Errorf("repeated ack changed state: %+v", after)
	}

	// A new version; then an ack of the old one is recorded but leaves
	// the new one pending.
	h.set("d1", `{"registers":["current"]}`)
	stale := topics.ConfigAck{Version: 1, Accepted: []topics.FieldChange{},
		Rejected:  []topics.FieldRejected{{Parameter: topics.ParamRegisters, Reason: "stale"}},
		Unchanged: []string{topics.ParamSamplingInterval, topics.ParamUploadInterval}}
	ev = h.Uplink("d1", topics.KindConfigAck, ackBody(stale), topics.EventConfig)
	json.Unmarshal(ev.Data, &data)
	if data["result"] != AckStale || data["pending"] != true {
		t.Errorf("stale ack event: %s", ev.Data)
	}
	if st := h.get("d1"); !st.Pending || st.Desired.Version != 2 {
		t.Errorf("stale ack cleared pending: %+v", st)
	}
	// An ack of the desired version clears it.
	ok := topics.ConfigAck{Version: 2, Accepted: []topics.FieldChange{{Parameter: topics.ParamRegisters, Old: []string{"voltage"}, New: []string{"current"}}},
		Rejected: []topics.FieldRejected{}, Unchanged: []string{topics.ParamSamplingInterval, topics.ParamUploadInterval}}
	h.Uplink("d1", topics.KindConfigAck, ackBody(ok), topics.EventConfig)
	st = h.get("d1")
	if st.Pending || st.Reported.Version != 2 || !slices.Equal(st.Reported.Registers, []string{"current"}) || len(st.Drift) != 0 {
		t.Errorf("state after ack of v2: %+v", st)
	}
	if n, _ := h.Redis.ZCard(h.Ctx, h.s.pendingKey()).Result(); n != 0 {
		t.Errorf("pending index holds %d devices", n)
	}
	for res, want := range map[string]float64{AckPartial: 2, AckStale: 1, AckAccepted: 1} {
		if got := testutil.ToFloat64(h.s.m.acks.WithLabelValues(res)); got != want {
			t.Errorf("acks{result=%s} = %v, want %v", res, got, want)
		}
	}
	hist, _ := h.s.History(h.Ctx, "d1", 0)
	var types []string
	for _, e := range hist {
		types = append(types, e.Type)
	}
	if strings.Join(types, ",") != "ack,ack,desired,ack,ack,desired" {
		t.Errorf("history types (newest first) = %v", types)
	}
}

// TestAckMalformed: a bad ack is a security event and changes no config
// state.
func TestAckMalformed(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	h.set("d1", `{"sampling_interval":10,"upload_interval":30}`)
	cases := []struct{ name, body string }{
		{"not JSON", `{"config_ack":`},
		{"no config_ack", `{"ack":{}}`},
		{"null config_ack", `{"config_ack":null}`},
		{"zero version", `{"config_ack":{"version":0,"accepted":[],"rejected":[],"unchanged":[]}}`},
		{"unknown member", `{"config_ack":{"version":1,"accepted":[],"rejected":[],"unchanged":[],"x":1}}`},
		{"unknown accepted parameter", `{"config_ack":{"version":1,"accepted":[{"parameter":"x","old":1,"new":2}],"rejected":[],"unchanged":[]}}`},
		{"accepted wrong type", `{"config_ack":{"version":1,"accepted":[{"parameter":"sampling_interval","old":5,"new":"10"}],"rejected":[],"unchanged":[]}}`},
		{"registers not strings", `{"config_ack":{"version":1,"accepted":[{"parameter":"registers","old":[],"new":[1]}],"rejected":[],"unchanged":[]}}`},
		{"parameter twice", `{"config_ack":{"version":1,"accepted":[],"rejected":[],"unchanged":["registers","registers"]}}`},
	}
	cfgKeys := []string{h.s.cfgKey("d1"), h.s.histKey("d1"), h.s.pendingKey()}
	dump := func() []string {
		var out []string
		for _, k := range cfgKeys {
			v, _ := h.Redis.Dump(h.Ctx, k).Result()
			out = append(out, v)
		}
		return out
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := dump()
			ev := h.Uplink("d1", topics.KindConfigAck, []byte(tc.body), topics.EventSecurity)
			if !strings.Contains(string(ev.Data), backend.ReasonInvalidBody) {
				t.Errorf("security event: %s", ev.Data)
			}
			if !slices.Equal(before, dump()) {
				t.Error("config state changed")
			}
		})
	}
}

// TestBirthReconciles: a device born with an older version gets the
// latest (only the latest); one that runs the desired version and has
// acknowledged it gets nothing.
func TestBirthReconciles(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	h.set("d1", `{"sampling_interval":10,"upload_interval":30}`)
	h.set("d1", `{"sampling_interval":20,"upload_interval":60}`)
	h.set("d1", `{"registers":["voltage"]}`)
	if n := len(h.downlinks("d1")); n != 3 {
		t.Fatalf("%d sent, want 3", n)
	}
	h.birth("d1", 0, topics.DefaultConfig())
	ups := h.waitDownlinks("d1", 4)
	if len(ups) != 4 || ups[3].Version != 3 || *ups[3].SamplingInterval != 20 {
		t.Fatalf("after birth: %+v", ups)
	}
	if st := h.get("d1"); st.Reported == nil || st.Reported.Version != 0 || !st.Reported.Equal(topics.DefaultConfig()) {
		t.Errorf("reported from birth: %+v", st.Reported)
	}
	h.Uplink("d1", topics.KindConfigAck, ackBody(topics.ConfigAck{Version: 3, Accepted: []topics.FieldChange{}, Rejected: []topics.FieldRejected{}, Unchanged: topics.ConfigParams}), topics.EventConfig)
	// Counted after the send; the ack, processed after the birth, proves it done.
	if got := testutil.ToFloat64(h.s.m.redeliveries); got != 1 {
		t.Errorf("redeliveries = %v", got)
	}
	h.birth("d1", 3, h.get("d1").Desired.Config)
	h.Uplink("d1", topics.KindConfigAck, ackBody(topics.ConfigAck{Version: 3, Accepted: []topics.FieldChange{}, Rejected: []topics.FieldRejected{}, Unchanged: topics.ConfigParams}), topics.EventConfig)
	if n := len(h.downlinks("d1")); n != 4 {
		t.Errorf("a device in sync got %d more config messages", n-4)
	}
	// A device that runs a version the backend never made: the next
	// version is numbered above it.
	h.birth("d1", 9, topics.DefaultConfig())
	// An uplink after the birth: processed once the birth handlers are done.
	h.Uplink("d1", topics.KindConfigAck, ackBody(topics.ConfigAck{Version: 3, Accepted: []topics.FieldChange{}, Rejected: []topics.FieldRejected{}, Unchanged: topics.ConfigParams}), topics.EventConfig)
	if r := h.set("d1", `{"sampling_interval":5,"upload_interval":15}`); r.Desired.Version != 10 {
		t.Errorf("version after a device at 9 = %d, want 10", r.Desired.Version)
	}
}

// TestSweep: pending versions are redelivered to online devices once
// SweepInterval has passed since the last delivery; offline devices wait
// for their birth.
func TestSweep(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"on", "off"} {
		h.Device(id)
		h.set(id, `{"sampling_interval":10,"upload_interval":30}`)
	}
	// Born at version 1 without an ack: pending, so the birth redelivers.
	h.birth("on", 1, h.get("on").Desired.Config)
	sentOn := len(h.waitDownlinks("on", 2))
	if n, err := h.s.Sweep(h.Ctx); err != nil || n != 0 {
		t.Fatalf("sweep right after delivery: %d, %v", n, err)
	}
	h.Clock.Advance(31 * time.Second)
	if n, err := h.s.Sweep(h.Ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v; want 1", n, err)
	}
	if got := len(h.downlinks("on")); got != sentOn+1 {
		t.Errorf("online device got %d more", got-sentOn)
	}
	if got := len(h.downlinks("off")); got != 1 {
		t.Errorf("offline device got %d config messages, want 1", got)
	}
	// Once acknowledged, the sweep forgets the device.
	h.Uplink("on", topics.KindConfigAck, ackBody(topics.ConfigAck{Version: 1, Accepted: []topics.FieldChange{}, Rejected: []topics.FieldRejected{}, Unchanged: topics.ConfigParams}), topics.EventConfig)
	h.Clock.Advance(31 * time.Second)
	if n, _ := h.s.Sweep(h.Ctx); n != 0 {
		t.Errorf("sweep after ack sent %d", n)
	}
	ids, _ := h.Redis.ZRange(h.Ctx, h.s.pendingKey(), 0, -1).Result()
	if !slices.Equal(ids, []string{"off"}) {
		t.Errorf("pending index = %v", ids)
	}
}

// TestOps: an admin's ops message creates a version with the operator as
// "who"; a viewer, an unknown account and a bad document get a rejected
// event and change nothing.
func TestOps(t *testing.T) {
	h := newHarness(t)
	h.Device("d1")
	if err := h.Fleet.EnsureOperator(h.Ctx, "alice", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if err := h.Fleet.EnsureOperator(h.Ctx, "victor", "pw", topics.RoleViewer); err != nil {
		t.Fatal(err)
	}
	ev := h.ops("d1", "alice", `{"sampling_interval":10,"upload_interval":20}`)
	if ev["status"] != "desired" || ev["by"] != "alice" || ev["via"] != ViaMQTT || ev["version"] != float64(1) {
		t.Fatalf("admin ops event: %v", ev)
	}
	cases := []struct{ name, op, body, code, field string }{
		{"viewer", "victor", `{"sampling_interval":30,"upload_interval":60}`, backend.CodeForbidden, ""},
		{"unknown operator", "mallory", `{"sampling_interval":30,"upload_interval":60}`, backend.CodeForbidden, ""},
		{"anonymous", "", `{"sampling_interval":30,"upload_interval":60}`, backend.CodeForbidden, ""},
		{"bad document", "alice", `{"sampling_interval":0}`, backend.CodeInvalid, "sampling_interval"},
		{"unknown register", "alice", `{"registers":["flux"]}`, backend.CodeInvalid, "registers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			ev := h.ops("d1", tc.op, tc.body)
			e, _ := ev["error"].(map[string]any)
			if ev["status"] != "rejected" || e["code"] != tc.code || e["field"] != tc.field {
				t.Fatalf("event: %v", ev)
			}
			h.AssertUnchanged(t, before)
		})
	}
	if st := h.get("d1"); st.Desired.Version != 1 || st.Desired.UpdatedBy != "alice" {
		t.Errorf("state: %+v", st.Desired)
	}
}
