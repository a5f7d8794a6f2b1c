package commands

import (
	"context"
	"errors"

	"github.com/ecowatt/ecowatt/backend"
)

// handleLifecycle cancels a device's commands when it is decommissioned
// (every unfinished one: it will never connect again) or disabled with
// cancel_commands (the queued ones: those sent or delivered may still
// report a result on a later enable), and drops its fleet-wide command
// index entries when it is purged (the per-device keys go with the
// device's).
func (s *Service) handleLifecycle(ctx context.Context, c backend.LifecycleChange) error {
	switch {
	case c.Change == backend.ChangePurge:
		return s.purgeIndex(ctx, c.Device)
	case c.Change == backend.ChangeDecommission:
		return s.cancelAll(ctx, c.Device, []string{StateQueued, StateSent, StateDelivered}, "device decommissioned")
	case c.CancelCommands:
		return s.cancelAll(ctx, c.Device, []string{StateQueued}, "device disabled")
	}
	return nil
}

// cancelAll moves dev's unfinished commands in one of states from to
// cancelled, recording why.
func (s *Service) cancelAll(ctx context.Context, dev string, from []string, why string) error {
	for {
		cids, err := s.activeIDs(ctx, dev)
		if err != nil {
			return err
		}
		cancelled := 0
		for _, cid := range cids {
			_, _, ok, err := s.transition(ctx, dev, cid, from, StateCancelled, map[string]any{fError: why})
			if err != nil && !errors.Is(err, backend.ErrNotFound) {
				return err
			}
			if ok {
				cancelled++
			}
		}
		if len(cids) < maxBatch || cancelled == 0 {
			break
		}
	}
	if err := s.forgetIfIdle(ctx, dev); err != nil {
		return err
	}
	s.log.Info().Str("device", dev).Str("why", why).Msg("commands cancelled")
	return nil
}

// purgeIndex deletes the fleet-wide ID index entries of dev's commands
// and drops dev from the index of devices with unfinished commands.
func (s *Service) purgeIndex(ctx context.Context, dev string) error {
	k := s.devKeys(dev)
	var cids []string
	for _, key := range []string{k.history, k.active} {
		ids, err := s.rdb.ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			return backend.Unavailable("purge commands of "+dev, err)
		}
		cids = append(cids, ids...)
	}
	pipe := s.rdb.Pipeline()
	for _, cid := range cids {
		pipe.Del(ctx, s.indexKey(cid)) // one key per call: each is its own slot
	}
	pipe.ZRem(ctx, s.activeDevices(), dev)
	if _, err := pipe.Exec(ctx); err != nil {
		return backend.Unavailable("purge commands of "+dev, err)
	}
	return nil
}
