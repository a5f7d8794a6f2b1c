package flash

import (
	"fmt"
	"strings"
	"sync"
)

// PowerCut is a Fault that cuts the power at a chosen write: the Nth time
// (counting from 1) a write of a file whose name starts with Prefix reaches
// Step. From then on every write fails with ErrPowerCut, as on a device
// that has lost power, until Restore. Install it with
// store.SetFault(cut.Fault).
type PowerCut struct {
	Prefix string // file name prefix to match; "" matches every file
	Step   Step
	N      int // which matching write to cut at; 0 means the first

	mu   sync.Mutex // guards seen and hit
	seen int
	hit  bool
}

// Fault implements the Fault hook.
func (p *PowerCut) Fault(op Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hit {
		return fmt.Errorf("%w (before %s %s)", ErrPowerCut, op.File, op.Step)
	}
	if op.Step != p.Step || !strings.HasPrefix(op.File, p.Prefix) {
		return nil
	}
	p.seen++
	if p.seen < max(p.N, 1) {
		return nil
	}
	p.hit = true
	return fmt.Errorf("%w at %s of %s", ErrPowerCut, op.Step, op.File)
}

// Hit reports whether the power has been cut.
func (p *PowerCut) Hit() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hit
}

// Restore switches the power back on; the next writes succeed.
func (p *PowerCut) Restore() {
	p.mu.Lock()
	p.hit = false
	p.seen = 0
	p.mu.Unlock()
}
