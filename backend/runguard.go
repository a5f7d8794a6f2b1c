package backend

import (
	"fmt"
	"sync/atomic"
)

// RunGuard makes a second call of a Run that may be called once an error
// instead of a second set of workers under the same leases and queues
// (the Service and the services built on it each hold one).
type RunGuard struct{ started atomic.Bool }

// Start marks the Run started; it is an error naming op when it already was.
func (g *RunGuard) Start(op string) error {
	if !g.started.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: already running", op)
	}
	return nil
}
