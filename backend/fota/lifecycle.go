package fota

import (
	"context"
	"fmt"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/redis/go-redis/v9"
)

// startable refuses an update of a disabled or decommissioned device
// (CodeConflict wrapping backend.ErrDisabled or ErrDecommissioned, which
// a rollout records as a skip with that reason).
func startable(d backend.Device) error {
	switch d.State {
	case backend.StateDisabled:
		return &backend.Error{Code: backend.CodeConflict, Field: "id", Err: backend.ErrDisabled,
			Message: fmt.Sprintf("device %s is disabled", d.ID)}
	case backend.StateDecommissioned:
		return &backend.Error{Code: backend.CodeConflict, Field: "id", Err: backend.ErrDecommissioned,
			Message: fmt.Sprintf("device %s is decommissioned", d.ID)}
	}
	return nil
}

// cancelUpdateScript ends a device's active update as cancelled.
// KEYS: dev hash. ARGV: reason, now ms. Returns 1 when one was active.
var cancelUpdateScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'fota_active') ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'fota_active', '0', 'fota_result', 'cancelled', 'fota_reason', ARGV[1],
  'fota_detail', '', 'fota_updated_at', ARGV[2])
return 1
`)

// handleLifecycle cancels a decommissioned device's update in progress
// (its rollout records the device as cancelled) and drops a purged
// device from the index of active updates. A disabled device keeps its
// update: the device resumes it when enabled, like after any absence.
func (s *Service) handleLifecycle(ctx context.Context, c backend.LifecycleChange) error {
	switch c.Change {
	case backend.ChangeDecommission:
		n, err := cancelUpdateScript.Run(ctx, s.rdb, []string{s.keys.Device(c.Device)}, "device decommissioned", s.now().UnixMilli()).Int()
		if err != nil {
			return backend.Unavailable("cancel update of "+c.Device, err)
		}
		if err := s.rdb.ZRem(ctx, s.activeKey(), c.Device).Err(); err != nil {
			return backend.Unavailable("cancel update of "+c.Device, err)
		}
		if n == 1 {
			s.log.Info().Str("device", c.Device).Msg("firmware update cancelled: device decommissioned")
			s.emit(ctx, c.Device, map[string]any{"state": ResultCancelled, "reason": "device decommissioned"})
			s.poke()
		}
	case backend.ChangePurge:
		if err := s.rdb.ZRem(ctx, s.activeKey(), c.Device).Err(); err != nil {
			return backend.Unavailable("purge update index of "+c.Device, err)
		}
	}
	return nil
}
