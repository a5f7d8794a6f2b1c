package commands

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSubmitBadInput: every bad command is refused with a clear reason
// and changes no state.
func TestSubmitBadInput(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	cases := []struct {
		name, dev, doc string
		code, field    string
		reason         string
	}{
		{"unknown action", "dev-1", `{"action":"explode"}`, backend.CodeInvalid, "action", "unknown action"},
		{"missing action", "dev-1", `{"target_register":"export_power","value":5}`, backend.CodeInvalid, "action", "missing"},
		{"read-only register", "dev-1", `{"action":"write_register","target_register":"voltage","value":5}`, backend.CodeInvalid, "target_register", "read-only"},
		{"unknown register", "dev-1", `{"action":"write_register","target_register":"flux","value":5}`, backend.CodeInvalid, "target_register", "unknown register"},
		{"unknown register to read", "dev-1", `{"action":"read_register","target_register":"flux"}`, backend.CodeInvalid, "target_register", "unknown register"},
		{"out of range", "dev-1", `{"action":"write_register","target_register":"export_power","value":150}`, backend.CodeInvalid, "value", "out of range"},
		{"negative value", "dev-1", `{"action":"write_register","target_register":"export_power","value":-1}`, backend.CodeInvalid, "value", "out of range"},
		{"missing value", "dev-1", `{"action":"write_register","target_register":"export_power"}`, backend.CodeInvalid, "value", "missing"},
		{"missing register", "dev-1", `{"action":"write_register","value":5}`, backend.CodeInvalid, "target_register", "missing"},
		{"value for ping", "dev-1", `{"action":"ping","value":5}`, backend.CodeInvalid, "value", "not allowed"},
		{"bad ttl", "dev-1", `{"action":"ping","ttl":"soon"}`, backend.CodeInvalid, "ttl", "not a duration"},
		{"negative ttl", "dev-1", `{"action":"ping","ttl":"-5m"}`, backend.CodeInvalid, "ttl", "out of range"},
		{"huge ttl", "dev-1", `{"action":"ping","ttl":"1000h"}`, backend.CodeInvalid, "ttl", "out of range"},
		{"unknown field", "dev-1", `{"action":"ping","urgent":true}`, backend.CodeInvalid, "urgent", "unknown field"},
		{"value as string", "dev-1", `{"action":"write_register","target_register":"export_power","value":"50"}`, backend.CodeInvalid, "value", "wrong type"},
		{"value as float", "dev-1", `{"action":"write_register","target_register":"export_power","value":50.5}`, backend.CodeInvalid, "value", "wrong type"},
		{"action as number", "dev-1", `{"action":7}`, backend.CodeInvalid, "action", "wrong type"},
		{"ttl as number", "dev-1", `{"action":"ping","ttl":600}`, backend.CodeInvalid, "ttl", "wrong type"},
		{"not an object", "dev-1", `["ping"]`, backend.CodeInvalid, "", ""},
		{"malformed json", "dev-1", `{"action":`, backend.CodeInvalid, "", ""},
		{"empty body", "dev-1", ``, backend.CodeInvalid, "", ""},
		{"unknown device", "nobody", `{"action":"ping"}`, backend.CodeNotFound, "id", "no device"},
		{"invalid device id", "no/body", `{"action":"ping"}`, backend.CodeNotFound, "id", "no device"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			c, err := h.svc.Parse([]byte(tc.doc))
			if err == nil {
				_, _, err = h.svc.Submit(h.Ctx, tc.dev, "tester", c)
			}
			if err == nil {
				t.Fatalf("%s accepted", tc.doc)
			}
			if got := backend.ErrorCode(err); got != tc.code {
				t.Errorf("code %s, want %s (%v)", got, tc.code, err)
			}
			msg, field := backend.ErrorMessage(err)
			if field != tc.field || !strings.Contains(msg, tc.reason) {
				t.Errorf("field %q message %q; want field %q and %q in the message", field, msg, tc.field, tc.reason)
			}
			h.AssertUnchanged(t, before)
			if n := len(h.downlinks("dev-1")); n != 0 {
				t.Errorf("%d commands sent", n)
			}
		})
	}
	if got := testutil.ToFloat64(h.svc.m.total.WithLabelValues("rejected")); got != float64(len(cases)) {
		t.Errorf("rejected counter %v, want %d", got, len(cases))
	}
}

// TestOpsRejectionEchoesRequestID: a bad command on the ops topic is not
// queued, and its rejection event carries the request_id.
func TestOpsRejectionEchoesRequestID(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	if err := h.Fleet.EnsureOperator(h.Ctx, "op", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	h.runOps()
	before := h.Snapshot()
	h.ops("dev-1", "op", `{"action":"write_register","target_register":"export_power","value":150,"request_id":"r-9"}`)
	h.AssertUnchanged(t, before)
	evs := h.events("dev-1")
	if len(evs) != 1 || evs[0]["status"] != "rejected" || evs[0]["request_id"] != "r-9" {
		t.Fatalf("events %v; want one rejection with request_id r-9", evs)
	}
	if e, _ := evs[0]["error"].(map[string]any); e["field"] != "value" {
		t.Errorf("rejection %v does not name the field", evs[0])
	}
	// A good one is queued and its events carry the request_id.
	h.ops("dev-1", "op", `{"action":"ping","request_id":"r-10"}`)
	evs = h.events("dev-1")
	if last := evs[len(evs)-1]; last["state"] != StateQueued || last["request_id"] != "r-10" || last["operator"] != "op" {
		t.Errorf("queued event %v", last)
	}
}

// TestLifecycle: queued -> sent -> delivered -> succeeded, each
// timestamped, evented and counted; a repeated result changes nothing.
func TestLifecycle(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	c := h.submit("dev-1", `{"action":"write_register","target_register":"export_power","value":50,"ttl":"10m","request_id":"abc"}`)
	if c.State != StateQueued || c.Seq != 1 || *c.Value != 50 || c.RequestID != "abc" || c.Operator != "tester" {
		t.Fatalf("queued command %+v", c)
	}
	if want := h.Clock.Now().Add(10 * time.Minute); !c.ExpiresAt.Equal(want) {
		t.Errorf("expires_at %v, want %v", c.ExpiresAt, want)
	}
	if err := h.svc.sendDevice(h.Ctx, "dev-1", false); err != nil {
		t.Fatal(err)
	}
	c = h.wantState(c.ID, StateSent)
	if c.Attempts != 1 || c.SentAt == nil {
		t.Errorf("sent command %+v", c)
	}
	down := h.downlinks("dev-1")
	if len(down) != 1 || down[0].ID != c.ID || *down[0].Value != 50 || !down[0].ExpiresAt.Equal(c.ExpiresAt) {
		t.Fatalf("downlinks %+v", down)
	}
	h.Clock.Advance(time.Second)
	if err := h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultDelivered}); err != nil {
		t.Fatal(err)
	}
	c = h.wantState(c.ID, StateDelivered)
	h.Clock.Advance(time.Second)
	v := 50
	res := topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, ExecutedAt: h.Clock.Now(), Value: &v, DurationMS: 12}
	if err := h.result("dev-1", res); err != nil {
		t.Fatal(err)
	}
	c = h.wantState(c.ID, StateSucceeded)
	if c.Result == nil || *c.Result.Value != 50 || c.Result.DurationMS != 12 || c.FinishedAt == nil || c.DeliveredAt == nil ||
		!c.DeliveredAt.Before(*c.FinishedAt) {
		t.Fatalf("succeeded command %+v", c)
	}
	// Duplicates: a repeated result and a late receipt change nothing.
	before := h.Snapshot()
	res.Duplicate = true
	for _, r := range []topics.CommandResult{res, {ID: c.ID, Status: topics.ResultDelivered}} {
		if err := h.result("dev-1", r); err != nil {
			t.Fatal(err)
		}
	}
	h.AssertUnchanged(t, before)
	var states []string
	for _, ev := range h.events("dev-1") {
		states = append(states, ev["state"].(string))
		if ev["request_id"] != "abc" {
			t.Errorf("event %v without the request_id", ev)
		}
	}
	if got := strings.Join(states, ","); got != "queued,sent,delivered,succeeded" {
		t.Errorf("events %s", got)
	}
	if n, _ := h.Redis.ZCard(h.Ctx, h.svc.devKeys("dev-1").active).Result(); n != 0 {
		t.Errorf("%d commands still active", n)
	}
	if ttl, _ := h.Redis.PTTL(h.Ctx, h.svc.cmdKey("dev-1", c.ID)).Result(); ttl <= 0 {
		t.Errorf("final command has no retention TTL (%v)", ttl)
	}
	if got := testutil.ToFloat64(h.svc.m.total.WithLabelValues(StateSucceeded)); got != 1 {
		t.Errorf("succeeded counter %v", got)
	}
	if got := testutil.CollectAndCount(h.svc.m.latency); got != 1 {
		t.Errorf("latency histogram has %d series", got)
	}
	audit, err := h.Fleet.Events(h.Ctx, "dev-1", 100)
	if err != nil || len(audit) != 4 {
		t.Errorf("audit stream: %d events, %v", len(audit), err)
	}
}

// TestResultWithoutReceipt: a final result straight after sent records
// delivered in the same step.
func TestResultWithoutReceipt(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	c := h.submit("dev-1", `{"action":"ping"}`)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if err := h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultFailed, Error: "modbus exception 03 illegal data value"}); err != nil {
		t.Fatal(err)
	}
	c = h.wantState(c.ID, StateFailed)
	if c.DeliveredAt == nil || c.Error != "modbus exception 03 illegal data value" || c.Result.Error != c.Error {
		t.Errorf("failed command %+v", c)
	}
}

// TestResultBadInput: malformed results, unknown IDs and another device's
// command are CodeInvalid and change nothing.
func TestResultBadInput(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	h.device("dev-2", true)
	c := h.submit("dev-1", `{"action":"ping"}`)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	cases := []struct{ name, dev, body string }{
		{"not json", "dev-1", `{"command_result":`},
		{"no command_result", "dev-1", `{"result":{}}`},
		{"null command_result", "dev-1", `{"command_result":null}`},
		{"unknown field", "dev-1", `{"command_result":{"id":"` + c.ID + `","status":"success","extra":1}}`},
		{"wrong type", "dev-1", `{"command_result":{"id":"` + c.ID + `","status":"success","value":"50"}}`},
		{"bad status", "dev-1", `{"command_result":{"id":"` + c.ID + `","status":"done"}}`},
		{"missing id", "dev-1", `{"command_result":{"status":"success"}}`},
		{"unknown id", "dev-1", `{"command_result":{"id":"01JNOSUCHCOMMAND0000000000","status":"success"}}`},
		{"other device", "dev-2", `{"command_result":{"id":"` + c.ID + `","status":"success"}}`},
		{"trailing data", "dev-1", `{"command_result":{"id":"` + c.ID + `","status":"success"}} {}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			err := h.svc.HandleResult(h.Ctx, tc.dev, envelopeMsg(tc.body))
			if backend.ErrorCode(err) != backend.CodeInvalid {
				t.Fatalf("err %v, want invalid", err)
			}
			h.AssertUnchanged(t, before)
		})
	}
	h.wantState(c.ID, StateSent)
}

// TestCancel: only a queued command can be cancelled.
func TestCancel(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	a := h.submit("dev-1", `{"action":"ping"}`)
	b := h.submit("dev-1", `{"action":"reboot"}`)
	c, err := h.svc.Cancel(h.Ctx, a.ID)
	if err != nil || c.State != StateCancelled || c.FinishedAt == nil {
		t.Fatalf("cancel queued: %+v %v", c, err)
	}
	h.setOnline("dev-1", true)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if d := h.downlinks("dev-1"); len(d) != 1 || d[0].ID != b.ID {
		t.Fatalf("downlinks %+v; the cancelled command must not go", d)
	}
	cases := []struct{ name, cid, code string }{
		{"already cancelled", a.ID, backend.CodeConflict},
		{"sent", b.ID, backend.CodeConflict},
		{"unknown", "01JNOSUCHCOMMAND0000000000", backend.CodeNotFound},
		{"garbage id", "../x", backend.CodeNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			_, err := h.svc.Cancel(h.Ctx, tc.cid)
			if backend.ErrorCode(err) != tc.code {
				t.Fatalf("err %v, want %s", err, tc.code)
			}
			h.AssertUnchanged(t, before)
		})
	}
}

// TestExpired: commands whose TTL passes before delivery expire, whether
// they were never sent (device offline) or sent without a receipt.
func TestExpired(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	a := h.submit("dev-1", `{"action":"ping","ttl":"1m"}`)
	b := h.submit("dev-1", `{"action":"ping","ttl":"5m"}`)
	h.Clock.Advance(61 * time.Second)
	if err := h.svc.sweep(h.Ctx); err != nil {
		t.Fatal(err)
	}
	h.wantState(a.ID, StateExpired)
	h.wantState(b.ID, StateQueued)
	h.setOnline("dev-1", true)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	h.wantState(b.ID, StateSent)
	h.Clock.Advance(5 * time.Minute)
	h.svc.sweep(h.Ctx)
	c := h.wantState(b.ID, StateExpired)
	if !strings.Contains(c.Error, "ttl") {
		t.Errorf("expired command error %q", c.Error)
	}
	if d := h.downlinks("dev-1"); len(d) != 1 {
		t.Errorf("%d downlinks; the expired command must never go", len(d))
	}
	// The device refusing a command it got too late also makes it expired.
	c = h.submit("dev-1", `{"action":"ping"}`)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultFailed, Error: "expired"})
	h.wantState(c.ID, StateExpired)
	// Once nothing is active the device leaves the sweep's index.
	h.svc.sweep(h.Ctx)
	if n, _ := h.Redis.ZCard(h.Ctx, h.svc.activeDevices()).Result(); n != 0 {
		t.Errorf("cmdactive has %d devices", n)
	}
}

// TestTimedOut: a delivered command without a result times out; a late
// result is kept but does not change the state.
func TestTimedOut(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	c := h.submit("dev-1", `{"action":"reboot"}`)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultDelivered})
	h.Clock.Advance(59 * time.Second)
	h.svc.sweep(h.Ctx)
	h.wantState(c.ID, StateDelivered)
	h.Clock.Advance(2 * time.Second)
	h.svc.sweep(h.Ctx)
	c = h.wantState(c.ID, StateTimedOut)
	if !strings.Contains(c.Error, "no result") {
		t.Errorf("error %q", c.Error)
	}
	if err := h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, ExecutedAt: h.Clock.Now()}); err != nil {
		t.Fatal(err)
	}
	c = h.wantState(c.ID, StateTimedOut)
	if c.LateResult == nil || c.LateResult.Status != topics.ResultSuccess {
		t.Errorf("late result not kept: %+v", c)
	}
}

// TestDeliveryOrderAndResend: commands queued while offline go out in
// order once the device is online; a sent command without a receipt goes
// again after ResendAfter, and everything unfinished goes again on a
// reconnect.
func TestDeliveryOrderAndResend(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", false)
	var ids []string
	for _, v := range []int{10, 20, 30} {
		ids = append(ids, h.submit("dev-1", `{"action":"write_register","target_register":"export_power","value":`+itoa(v)+`}`).ID)
	}
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if n := len(h.downlinks("dev-1")); n != 0 {
		t.Fatalf("%d sent to an offline device", n)
	}
	h.setOnline("dev-1", true)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if got := idsOf(h.downlinks("dev-1")); got != strings.Join(ids, ",") {
		t.Fatalf("sent %s, want %s", got, strings.Join(ids, ","))
	}
	h.result("dev-1", topics.CommandResult{ID: ids[0], Status: topics.ResultDelivered})
	h.Clock.Advance(5 * time.Second)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if n := len(h.downlinks("dev-1")); n != 3 {
		t.Fatalf("%d downlinks before ResendAfter, want 3", n)
	}
	h.Clock.Advance(6 * time.Second)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if got := idsOf(h.downlinks("dev-1")[3:]); got != ids[1]+","+ids[2] {
		t.Fatalf("resent %s, want the two without a receipt", got)
	}
	if c := h.get(ids[1]); c.Attempts != 2 || c.State != StateSent {
		t.Errorf("resent command %+v", c)
	}
	h.svc.sendDevice(h.Ctx, "dev-1", true) // reconnect: everything unfinished
	if got := idsOf(h.downlinks("dev-1")[5:]); got != strings.Join(ids, ",") {
		t.Fatalf("after reconnect sent %s", got)
	}
}

func idsOf(cs []topics.Command) string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return strings.Join(ids, ",")
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestOpsNeedsAnAdmin: over MQTT only a known admin operator may queue a
// command (an external broker's ACL is not ours); others get a rejection
// event and nothing is queued.
func TestOpsNeedsAnAdmin(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	if err := h.Fleet.EnsureOperator(h.Ctx, "viewer1", "pw", topics.RoleViewer); err != nil {
		t.Fatal(err)
	}
	h.runOps()
	for _, op := range []string{"", "viewer1", "nobody"} {
		t.Run("operator "+op, func(t *testing.T) {
			before := h.Snapshot()
			h.ops("dev-1", op, `{"action":"ping","request_id":"x"}`)
			h.AssertUnchanged(t, before)
			evs := h.events("dev-1")
			last := evs[len(evs)-1]
			if e, _ := last["error"].(map[string]any); last["status"] != "rejected" || e["code"] != backend.CodeForbidden {
				t.Fatalf("last event %v; want a forbidden rejection", last)
			}
		})
	}
}

// runOps runs the fleet with the service attached, so that operator
// messages enter where they do in production: on the ops topic.
func (h *harness) runOps() {
	h.T.Helper()
	h.svc.Attach()
	h.RunFleet(2)
}

// ops publishes an operator message on ecowatt/v1/ops/{dev}/command and
// waits for the command event it causes.
func (h *harness) ops(dev, operator, body string) {
	h.T.Helper()
	h.Ops(dev, operator, topics.KindCommand, body, topics.EventCommand)
}
