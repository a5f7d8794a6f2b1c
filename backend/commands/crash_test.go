package commands

import (
	"testing"
)

// TestSubmitCrashBetweenSteps: Submit writes the device's command records
// (one slot) and the fleet-wide ID index (another slot) in two steps. A
// crash between them used to leave an accepted command that GET and
// DELETE /api/v1/commands/{id} answered 404 forever, and the idempotent
// retry returned its ID without repairing it.
func TestSubmitCrashBetweenSteps(t *testing.T) {
	h := newHarness(t)
	h.device("d1", false)
	doc := `{"action":"write_register","target_register":"export_power","value":40,"request_id":"r-crash"}`
	c, err := h.svc.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	testCrashAfterEnqueue.Store(true)
	_, _, err = h.svc.Submit(h.Ctx, "d1", "tester", c)
	testCrashAfterEnqueue.Store(false)
	if err != errTestCrash {
		t.Fatalf("submit with the crash hook: %v", err)
	}
	page, err := h.svc.List(h.Ctx, "d1", 0, "")
	if err != nil || len(page.Commands) != 1 {
		t.Fatalf("device history after the crash: %+v, %v; want the accepted command", page, err)
	}
	cid := page.Commands[0].ID
	if got, err := h.svc.Get(h.Ctx, cid); err != nil || got.ID != cid {
		t.Fatalf("GET of the accepted command after the crash: %+v, %v", got, err)
	}

	// The idempotent retry returns it, and it stays reachable.
	cmd, created, err := h.svc.Submit(h.Ctx, "d1", "tester", c)
	if err != nil || created || cmd.ID != cid {
		t.Fatalf("retry: %s created=%v err=%v; want %s, not created", cmd.ID, created, err, cid)
	}
	// An orphan left by an older version (index missing) is repaired by
	// the retry.
	if err := h.Redis.Del(h.Ctx, h.svc.indexKey(cid)).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.svc.Submit(h.Ctx, "d1", "tester", c); err != nil {
		t.Fatal(err)
	}
	if got, err := h.svc.Cancel(h.Ctx, cid); err != nil || got.State != StateCancelled {
		t.Fatalf("DELETE of the command after the retry: %+v, %v", got, err)
	}
}
