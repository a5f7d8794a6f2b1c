package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// presenceConfig are serve's presence-reconciliation flags
// (docs/OPERATIONS.md, "Presence").
type presenceConfig struct {
	sweep, expiry time.Duration
	batch         int
}

func (c *presenceConfig) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.sweep, "presence-sweep", 10*time.Second, "how often each replica checks online devices against the connections it holds; a replica is dead 3 periods after its last heartbeat")
	fs.DurationVar(&c.expiry, "presence-expiry", backend.DefaultPresenceExpiry, "a device no replica holds (external broker) is marked offline when its last uplink is older than this (1.5 × keepalive + the longest upload interval)")
	fs.IntVar(&c.batch, "presence-batch", 5000, "online devices checked per --presence-sweep period")
}

// check refuses non-positive values before serve starts anything.
func (c *presenceConfig) check() error {
	if c.sweep <= 0 || c.expiry <= 0 || c.batch <= 0 {
		return usageError{fmt.Sprintf("--presence-sweep %v, --presence-expiry %v, --presence-batch %d: each must be positive", c.sweep, c.expiry, c.batch)}
	}
	return nil
}

// apply sets the flags in cfg.
func (c *presenceConfig) apply(cfg *backend.Config) {
	cfg.PresenceSweep, cfg.PresenceExpiry, cfg.PresenceBatch = c.sweep, c.expiry, c.batch
}

// connections is the embedded broker's view of its device connections,
// nil with an external broker (presence then relies on last_seen).
func (m *messaging) connections() backend.Connections {
	if m.brk == nil {
		return nil
	}
	return m.brk
}
