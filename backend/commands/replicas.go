package commands

import (
	"context"
	"errors"
	"time"

	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// wakeKey is the hash of devices the delivery lease holder must look at:
// field device, value "1" to resend everything unfinished, else "0".
func (s *Service) wakeKey() string { return s.keys.Global("cmdwake") }

// kick asks the delivery lease holder, whichever replica it is, to look at
// dev; all also repeats every command that is sent or delivered but not
// finished (after a reconnect). When the write fails the sweep still
// finds dev's queued commands within SweepInterval.
func (s *Service) kick(ctx context.Context, dev string, all bool) {
	var err error
	if all {
		err = s.rdb.HSet(ctx, s.wakeKey(), dev, "1").Err()
	} else {
		err = s.rdb.HSetNX(ctx, s.wakeKey(), dev, "0").Err()
	}
	if err != nil {
		s.log.Warn().Err(err).Str("device", dev).Msg("wake deliverer: the sweep will find the device")
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// takeWoken reads and clears the devices to look at, in one MULTI on the
// one key.
func (s *Service) takeWoken(ctx context.Context) (map[string]bool, error) {
	var get *redis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		get = p.HGetAll(ctx, s.wakeKey())
		p.Del(ctx, s.wakeKey())
		return nil
	})
	if err != nil {
		return nil, unavailable("woken devices", err)
	}
	out := make(map[string]bool, len(get.Val()))
	for dev, v := range get.Val() {
		out[dev] = v == "1"
	}
	return out, nil
}

// deliverLoop sends commands while this replica holds the delivery lease:
// the lease holder's loop is the only sender of the fleet, so one
// device's commands leave in queue order. It looks at the woken devices
// at once when this replica woke one, and every DeliveryTick for those
// other replicas woke.
func (s *Service) deliverLoop(ctx context.Context) {
	underLease(ctx, s.delivery, "command-delivery", s.cfg.DeliveryTick, s.log, func(held context.Context) {
		s.takeOver(held)
		t := time.NewTicker(s.cfg.DeliveryTick)
		defer t.Stop()
		for {
			s.deliverWoken(held)
			select {
			case <-held.Done():
				return
			case <-s.wake:
			case <-t.C:
			}
		}
	})
}

// takeOver runs when this replica takes the delivery lease: the last
// holder (a replica that died, or this process's predecessor) may have
// sent commands that never arrived and lost results that did, so every
// device with unfinished commands gets all of them again, in queue order,
// before anything newer (the device answers known IDs from its flash).
func (s *Service) takeOver(ctx context.Context) {
	it := s.rdb.ZScan(ctx, s.activeDevices(), 0, "", 1000).Iterator()
	n := 0
	for i := 0; it.Next(ctx); i++ {
		if i%2 == 1 { // ZSCAN yields member, score, member, score, ...
			continue
		}
		if err := s.deliver(ctx, it.Val(), true); err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Str("device", it.Val()).Msg("command delivery")
		}
		n++
	}
	if err := it.Err(); err != nil && ctx.Err() == nil {
		s.log.Error().Err(unavailable("command takeover", err)).Msg("command delivery")
	}
	if n > 0 {
		s.log.Info().Int("devices", n).Msg("delivery taken over: unfinished commands sent again")
	}
}

// deliverWoken delivers to every woken device. When the lease is lost
// half-way, the devices not yet visited go back to cmdwake for the next
// holder.
func (s *Service) deliverWoken(ctx context.Context) {
	woken, err := s.takeWoken(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error().Err(err).Msg("command delivery")
		}
		return
	}
	for dev, all := range woken {
		err := s.deliver(ctx, dev, all)
		if ctx.Err() != nil {
			s.putBack(woken) // dev included: it may have been cut short
			return
		}
		delete(woken, dev)
		if err != nil {
			s.log.Error().Err(err).Str("device", dev).Msg("command delivery")
		}
	}
}

// putBack returns devices to cmdwake, keeping a "resend all" already there.
func (s *Service) putBack(woken map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p := s.rdb.Pipeline()
	for dev, all := range woken {
		if all {
			p.HSet(ctx, s.wakeKey(), dev, "1")
		} else {
			p.HSetNX(ctx, s.wakeKey(), dev, "0")
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		s.log.Warn().Err(err).Int("devices", len(woken)).Msg("woken devices not handed back: the sweep will find them")
	}
}

// sweepLoop sweeps while this replica holds the sweep lease: at once (so
// a restarted backend picks up where the last one stopped) and then every
// SweepInterval.
func (s *Service) sweepLoop(ctx context.Context) {
	underLease(ctx, s.sweeper, "command-sweep", s.cfg.SweepInterval, s.log, func(held context.Context) {
		t := time.NewTicker(s.cfg.SweepInterval)
		defer t.Stop()
		for {
			if err := s.sweep(held); err != nil && held.Err() == nil {
				s.log.Error().Err(err).Msg("command sweep")
			}
			select {
			case <-held.Done():
				return
			case <-t.C:
			}
		}
	})
}

// underLease runs work while this replica holds l, trying to take l at
// once and then every retry while another replica holds it. work must
// return when its context (cancelled when the lease is lost or ctx ends)
// is done. underLease releases the lease and returns when ctx is done.
func underLease(ctx context.Context, l *lease.Lease, name string, retry time.Duration, log zerolog.Logger, work func(held context.Context)) {
	log = log.With().Str("lease", name).Str("token", l.Token()).Logger()
	t := time.NewTicker(retry)
	defer t.Stop()
	for {
		held, release, err := l.Hold(ctx)
		switch {
		case err == nil:
			log.Info().Msg("lease taken: this replica does the work")
			work(held)
			release()
			if ctx.Err() == nil {
				log.Warn().Msg("lease lost: another replica does the work")
			}
		case errors.Is(err, lease.ErrHeld):
		case ctx.Err() == nil:
			log.Warn().Err(err).Msg("take lease")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
