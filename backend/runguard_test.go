package backend

import (
	"strings"
	"sync"
	"testing"
)

// TestRunGuard: of concurrent Starts exactly one succeeds; the others
// name the operation.
func TestRunGuard(t *testing.T) {
	var g RunGuard
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- g.Start("x run") })
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !strings.Contains(err.Error(), "x run: already running"):
			t.Errorf("error %q does not name the operation", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d Starts succeeded, want 1", ok)
	}
}

// TestRunTwice: a Service's second Run is refused while the first runs.
func TestRunTwice(t *testing.T) {
	h := newHarness(t)
	if err := h.s.Run(h.ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Run: %v, want already running", err)
	}
}
