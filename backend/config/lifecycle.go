package config

import (
	"context"
	"errors"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/redis/go-redis/v9"
)

// changeable refuses a new desired config for a decommissioned device
// (CodeConflict); its history stays readable. A disabled device takes one:
// it is delivered when the device is enabled and reconnects.
func (s *Service) changeable(ctx context.Context, c redis.Cmdable, dev string) error {
	st, err := c.HGet(ctx, s.keys.Device(dev), backend.FieldState).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return backend.Unavailable("set config "+dev, err)
	}
	if st == backend.StateDecommissioned {
		return &backend.Error{Code: backend.CodeConflict, Field: "id", Err: backend.ErrDecommissioned,
			Message: "device " + dev + " is decommissioned"}
	}
	return nil
}

// handleLifecycle stops the sweep sending a decommissioned device its
// pending config (the pending index is fleet-wide, so not purged with the
// device's keys).
func (s *Service) handleLifecycle(ctx context.Context, c backend.LifecycleChange) error {
	if c.Change != backend.ChangeDecommission && c.Change != backend.ChangePurge {
		return nil
	}
	if err := s.rdb.ZRem(ctx, s.pendingKey(), c.Device).Err(); err != nil {
		return backend.Unavailable("unindex config of "+c.Device, err)
	}
	return nil
}
