package commands

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// roundTrip is v as a JSON consumer of the event sees it.
func roundTrip(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestScriptEventsMatchEventData: the events the enqueue and transition
// scripts append (AUDIT in Lua) are eventData of the command after each
// change, field for field; the published event is the audit stream's
// entry, with the operator as By.
func TestScriptEventsMatchEventData(t *testing.T) {
	h := newHarness(t)
	h.device("d1", true)
	h.svc.Attach()
	h.RunFleet(2)
	doc, err := h.svc.Parse([]byte(`{"action":"write_register","target_register":"export_power","value":40,"request_id":"r-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := h.svc.Submit(backend.WithOperator(h.Ctx, "alice"), "d1", "alice", doc)
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{roundTrip(t, eventData(h.get(c.ID), ""))}
	if err := h.svc.sendDevice(h.Ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	want = append(want, roundTrip(t, eventData(h.get(c.ID), StateQueued)))
	receipt := topics.CommandResult{ID: c.ID, Status: topics.ResultDelivered}
	h.Uplink("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &receipt}, topics.EventCommand)
	want = append(want, roundTrip(t, eventData(h.get(c.ID), StateSent)))
	v := 40
	res := topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, Value: &v, ExecutedAt: time.Now().UTC(), DurationMS: 12}
	h.Uplink("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &res}, topics.EventCommand)
	final := h.wantState(c.ID, StateSucceeded)
	if final.Result == nil || final.Result.Value == nil || *final.Result.Value != 40 {
		t.Fatalf("result %+v", final.Result)
	}
	want = append(want, roundTrip(t, eventData(final, StateDelivered)))

	got := h.events("d1")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("published events\n got %v\nwant %v", got, want)
	}
	stored, err := h.Fleet.Events(h.Ctx, "d1", 100)
	if err != nil {
		t.Fatal(err)
	}
	var audit []backend.Event
	for i := len(stored) - 1; i >= 0; i-- { // oldest first
		if stored[i].Kind == topics.EventCommand {
			audit = append(audit, stored[i])
		}
	}
	if len(audit) != len(want) {
		t.Fatalf("%d command events in the audit stream, want %d", len(audit), len(want))
	}
	for i, ev := range audit {
		if d := roundTrip(t, ev.Data); !reflect.DeepEqual(d, want[i]) {
			t.Errorf("audit event %d: %v, want %v", i, d, want[i])
		}
	}
	if audit[0].By != "alice" || audit[1].By != "" {
		t.Errorf("audit by: %q, %q; want alice, none", audit[0].By, audit[1].By)
	}
}

// TestResultReplayRefusedInScript: a command_result's replay check runs
// in its transition's script; a receipt or result sent again is a replay
// security event and changes nothing, not even a late result.
func TestResultReplayRefusedInScript(t *testing.T) {
	h := newHarness(t)
	h.device("d1", true)
	h.svc.Attach()
	h.RunFleet(2)
	c := h.submit("d1", `{"action":"ping"}`)
	if err := h.svc.sendDevice(h.Ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	seal := func(r topics.CommandResult) backend.Message {
		return h.Seal("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &r})
	}
	replayed := func(m backend.Message) {
		t.Helper()
		before := h.get(c.ID)
		events := len(h.events("d1"))
		ev := h.Deliver(m, "d1", topics.EventSecurity)
		if !strings.Contains(string(ev.Data), backend.ReasonReplay) {
			t.Fatalf("security event %s, want a replay", ev.Data)
		}
		if after := h.get(c.ID); !reflect.DeepEqual(after, before) {
			t.Fatalf("replay changed the command:\n%+v\n%+v", before, after)
		}
		if n := len(h.events("d1")); n != events {
			t.Fatalf("%d command events after the replay, want %d", n, events)
		}
	}
	receipt := seal(topics.CommandResult{ID: c.ID, Status: topics.ResultDelivered})
	h.Deliver(receipt, "d1", topics.EventCommand)
	h.wantState(c.ID, StateDelivered)
	replayed(receipt)
	result := seal(topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, ExecutedAt: time.Now().UTC()})
	h.Deliver(result, "d1", topics.EventCommand)
	h.wantState(c.ID, StateSucceeded)
	replayed(result)
	// A fresh copy (new nonce) of the same result is the idempotent repeat.
	h.Deliver(seal(topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, ExecutedAt: time.Now().UTC()}), "d1", "")
	time.Sleep(100 * time.Millisecond)
	if got := h.wantState(c.ID, StateSucceeded); got.LateResult != nil {
		t.Fatalf("repeat kept as late result: %+v", got.LateResult)
	}
}

// TestResultGuardMissFallsBack: a command the script's value guard does
// not list (a register this backend does not know, as an older version
// may have queued) goes to checkResultValue, which accepts it, and the
// result lands. (Refusals after a miss: TestResultValueChecked.)
func TestResultGuardMissFallsBack(t *testing.T) {
	h := newHarness(t)
	h.device("d1", true)
	c := h.submit("d1", `{"action":"read_register","target_register":"export_power"}`)
	if err := h.svc.sendDevice(h.Ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	if err := h.Redis.HSet(h.Ctx, h.svc.cmdKey("d1", c.ID), fTarget, "legacy_register").Err(); err != nil {
		t.Fatal(err)
	}
	v := 7
	if err := h.result("d1", topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, Value: &v, ExecutedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := h.wantState(c.ID, StateSucceeded); got.Result == nil || got.Result.Value == nil || *got.Result.Value != 7 {
		t.Fatalf("result %+v", got.Result)
	}
}

// countHook counts the commands a Redis client sends.
type countHook struct{ n atomic.Int64 }

func (c *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

// TestIdleTickOneCall: the delivery lease holder's tick costs one Redis
// command when no other replica woke a device, and still hands over the
// devices woken in cmdwake.
func TestIdleTickOneCall(t *testing.T) {
	h := newHarness(t)
	single, ok := h.Redis.(*redis.Client)
	if !ok {
		// The count is of one client's calls; a Cluster client's hooks
		// sit on its node clients.
		t.Skip("counts calls on a single-node client; the Cluster run is covered by the other tests")
	}
	opt := *single.Options()
	rdb := redis.NewClient(&opt)
	t.Cleanup(func() { rdb.Close() })
	var count countHook
	rdb.AddHook(&count)
	cfg := h.cfg
	cfg.Redis = rdb
	svc := fleettest.Build(t, New, cfg)
	if err := rdb.Ping(h.Ctx).Err(); err != nil { // the connection's own setup is not a tick's
		t.Fatal(err)
	}
	count.n.Store(0)
	for range 3 {
		woken, err := svc.takeWoken(h.Ctx)
		if err != nil || len(woken) != 0 {
			t.Fatalf("idle tick: %v, %v", woken, err)
		}
	}
	if n := count.n.Load(); n != 3 {
		t.Fatalf("3 idle ticks sent %d Redis commands, want 3", n)
	}
	if err := h.Redis.HSet(h.Ctx, svc.wakeKey(), "d1", "1").Err(); err != nil {
		t.Fatal(err)
	}
	woken, err := svc.takeWoken(h.Ctx)
	if err != nil || !reflect.DeepEqual(woken, map[string]bool{"d1": true}) {
		t.Fatalf("woken %v, %v; want d1 with resend all", woken, err)
	}
	if n, _ := h.Redis.Exists(h.Ctx, svc.wakeKey()).Result(); n != 0 {
		t.Fatal("cmdwake not cleared")
	}
}

// TestCheckedResultOneNonce: through the broker (the replay check in the
// script), a guard miss consumes no nonce, so the same message then
// lands; a result for a command that ended otherwise is kept as
// late_result by the one script; each message's nonce is used once
// (sent again, it is a replay).
func TestCheckedResultOneNonce(t *testing.T) {
	h := newHarness(t)
	h.device("d1", true)
	h.svc.Attach()
	h.RunFleet(2)
	legacy := h.submit("d1", `{"action":"read_register","target_register":"export_power"}`)
	gone := h.submit("d1", `{"action":"ping"}`)
	if err := h.svc.sendDevice(h.Ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	if err := h.Redis.HSet(h.Ctx, h.svc.cmdKey("d1", legacy.ID), fTarget, "legacy_register").Err(); err != nil {
		t.Fatal(err)
	}
	v := 7
	m := h.Seal("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &topics.CommandResult{
		ID: legacy.ID, Status: topics.ResultSuccess, Value: &v, ExecutedAt: time.Now().UTC()}})
	h.Deliver(m, "d1", topics.EventCommand)
	if got := h.wantState(legacy.ID, StateSucceeded); got.Result == nil || *got.Result.Value != 7 {
		t.Fatalf("result %+v", got.Result)
	}
	if ev := h.Deliver(m, "d1", topics.EventSecurity); !strings.Contains(string(ev.Data), backend.ReasonReplay) {
		t.Fatalf("second copy: %s, want a replay", ev.Data)
	}

	if _, err := h.svc.Cancel(h.Ctx, gone.ID); err == nil {
		t.Fatal("cancelled a sent command")
	}
	if _, _, ok, err := h.svc.transition(h.Ctx, "d1", gone.ID, []string{StateSent}, StateExpired, map[string]any{fError: errExpired}); err != nil || !ok {
		t.Fatalf("expire: %v %v", ok, err)
	}
	late := h.Seal("d1", topics.KindCommandResult, topics.CommandResultBody{CommandResult: &topics.CommandResult{
		ID: gone.ID, Status: topics.ResultSuccess, ExecutedAt: time.Now().UTC()}})
	ev := h.Deliver(late, "d1", topics.EventCommand)
	if !strings.Contains(string(ev.Data), `"expired"`) {
		t.Fatalf("late result event %s", ev.Data)
	}
	got := h.wantState(gone.ID, StateExpired)
	if got.LateResult == nil || got.LateResult.Status != topics.ResultSuccess || got.Result != nil {
		t.Fatalf("late result %+v, result %+v", got.LateResult, got.Result)
	}
	if ev := h.Deliver(late, "d1", topics.EventSecurity); !strings.Contains(string(ev.Data), backend.ReasonReplay) {
		t.Fatalf("second copy of the late result: %s, want a replay", ev.Data)
	}
}
