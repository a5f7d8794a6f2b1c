package commands

import (
	"context"
	"fmt"
	"github.com/ecowatt/ecowatt/backend"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// maxBatch bounds how many of one device's commands one pass looks at.
const maxBatch = 1000

// sendDevice sends dev's queued commands in order when it is online, expires
// those past their TTL, re-sends sent ones that got no receipt within
// ResendAfter and delivered ones without a result for ResultResend, and
// with all re-sends every unfinished one. Only the delivery lease holder
// calls it, and only from dev's delivery shard (sendLoop), so that
// commands leave in order. Each command's script decides what is due
// from the command as it is (deliverScript), so nothing is read first.
func (s *Service) sendDevice(ctx context.Context, dev string, all bool) error {
	cids, err := s.activeIDs(ctx, dev)
	if err != nil || len(cids) == 0 { // nothing to do: spare the device lookup
		return err
	}
	d, err := s.fleet.Device(ctx, dev)
	if err != nil {
		return fmt.Errorf("deliver to %s: %w", dev, err)
	}
	if !d.Online {
		return nil
	}
	resendAll := "0"
	if all {
		resendAll = "1"
	}
	pre := &prefix{script: deliverScript, args: []any{resendAll, s.cfg.ResendAfter.Milliseconds(), s.cfg.ResultResend.Milliseconds(), errExpired}}
	unfinished := []string{StateQueued, StateSent, StateDelivered}
	var gone []string
	for _, cid := range cids {
		c, _, code, err := s.runTransition(ctx, dev, cid, unfinished, "", nil, "", nil, pre)
		if backend.ErrorCode(err) == backend.CodeNotFound { // expired by retention
			gone = append(gone, cid)
			continue
		}
		if err != nil {
			return fmt.Errorf("deliver %s to %s: %w", cid, dev, err)
		}
		switch {
		case code == 1 && c.State == StateExpired:
			s.log.Info().Str("device", dev).Str("command", cid).Msg("command expired")
		case code == 1 && c.State == StateSent, code == 4: // code 4: a delivered command sent again
			// When the publish fails the command stays sent (delivered)
			// and goes again after ResendAfter (ResultResend).
			if err := s.fleet.Send(ctx, dev, topics.KindCommand, body(c)); err != nil {
				return fmt.Errorf("deliver %s to %s: %w", cid, dev, err)
			}
		}
	}
	if len(gone) > 0 {
		s.rdb.ZRem(ctx, s.devKeys(dev).active, toAny(gone)...)
	}
	return nil
}

// errExpired is the error of a command whose TTL passed before a receipt
// or result.
const errExpired = "ttl passed before the device confirmed delivery"

// resultOverdue reports whether delivered command c has waited longer
// than after for its result since it was last sent or acknowledged.
func resultOverdue(c Command, now time.Time, after time.Duration) bool {
	last := c.DeliveredAt
	if c.LastSentAt != nil && (last == nil || c.LastSentAt.After(*last)) {
		last = c.LastSentAt
	}
	return last != nil && now.Sub(*last) >= after
}

func body(c Command) topics.CommandBody {
	return topics.CommandBody{Command: &topics.Command{
		ID: c.ID, Action: c.Action, TargetRegister: c.TargetRegister, Value: c.Value, ExpiresAt: c.ExpiresAt,
	}}
}

func expired(c Command, now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

func (s *Service) expire(ctx context.Context, c Command) {
	_, _, ok, err := s.transition(ctx, c.Device, c.ID, []string{StateQueued, StateSent}, StateExpired,
		map[string]any{fError: errExpired})
	if err != nil {
		s.log.Error().Err(err).Str("device", c.Device).Str("command", c.ID).Msg("expire command")
	} else if ok {
		s.log.Info().Str("device", c.Device).Str("command", c.ID).Msg("command expired")
	}
}

// active returns dev's unfinished commands in queue order.
func (s *Service) active(ctx context.Context, dev string) ([]Command, error) {
	cids, err := s.activeIDs(ctx, dev)
	if err != nil {
		return nil, err
	}
	return s.loadActive(ctx, dev, cids)
}

// activeIDs returns the IDs of dev's unfinished commands in queue order.
func (s *Service) activeIDs(ctx context.Context, dev string) ([]string, error) {
	cids, err := s.rdb.ZRange(ctx, s.devKeys(dev).active, 0, maxBatch-1).Result()
	if err != nil {
		return nil, backend.Unavailable("active commands of "+dev, err)
	}
	return cids, nil
}

// loadActive reads dev's unfinished commands cids, dropping from the
// queue those that are gone.
func (s *Service) loadActive(ctx context.Context, dev string, cids []string) ([]Command, error) {
	cmds, gone, err := s.loadMany(ctx, dev, cids)
	if err != nil {
		return nil, err
	}
	if len(gone) > 0 {
		s.rdb.ZRem(ctx, s.devKeys(dev).active, toAny(gone)...)
	}
	return cmds, nil
}

// sweep visits every device with unfinished commands.
func (s *Service) sweep(ctx context.Context) error {
	it := s.rdb.ZScan(ctx, s.activeDevices(), 0, "", 1000).Iterator()
	i := 0
	for it.Next(ctx) {
		i++
		if i%2 == 0 { // ZSCAN yields member, score, member, score, ...
			continue
		}
		if err := s.sweepDevice(ctx, it.Val()); err != nil {
			s.log.Error().Err(err).Str("device", it.Val()).Msg("command sweep")
		}
	}
	if err := it.Err(); err != nil {
		return backend.Unavailable("command sweep", err)
	}
	return nil
}

// sweepDevice expires and times out dev's commands and hands the device
// to the sender (through cmdwake, as the delivery lease may be another
// replica's) when something is waiting to go out.
func (s *Service) sweepDevice(ctx context.Context, dev string) error {
	cmds, err := s.active(ctx, dev)
	if err != nil {
		return err
	}
	if len(cmds) == 0 {
		return s.forgetIfIdle(ctx, dev)
	}
	wait := false
	for _, c := range cmds {
		now := s.now()
		switch c.State {
		case StateQueued, StateSent:
			switch {
			case expired(c, now):
				s.expire(ctx, c)
			case c.State == StateQueued, c.LastSentAt == nil, now.Sub(*c.LastSentAt) >= s.cfg.ResendAfter:
				wait = true
			}
		case StateDelivered:
			if c.DeliveredAt == nil || now.Sub(*c.DeliveredAt) < s.cfg.ResultTimeout {
				wait = wait || resultOverdue(c, now, s.cfg.ResultResend)
			} else {
				_, _, ok, err := s.transition(ctx, dev, c.ID, []string{StateDelivered}, StateTimedOut,
					map[string]any{fError: fmt.Sprintf("no result within %v of delivery", s.cfg.ResultTimeout)})
				if err != nil {
					return err
				}
				if ok {
					s.log.Warn().Str("device", dev).Str("command", c.ID).Msg("command timed out")
				}
			}
		}
	}
	if wait {
		s.kick(ctx, dev, false)
	}
	return nil
}

// forgetIfIdle drops dev from the fleet-wide index of devices with
// unfinished commands. The index is another slot than the queue, so it
// checks again after removing: a command queued in between puts it back.
func (s *Service) forgetIfIdle(ctx context.Context, dev string) error {
	if err := s.rdb.ZRem(ctx, s.activeDevices(), dev).Err(); err != nil {
		return backend.Unavailable("command index", err)
	}
	n, err := s.rdb.ZCard(ctx, s.devKeys(dev).active).Result()
	if err != nil {
		return backend.Unavailable("command index", err)
	}
	if n > 0 {
		return s.rdb.ZAdd(ctx, s.activeDevices(), redis.Z{Member: dev}).Err()
	}
	return nil
}
