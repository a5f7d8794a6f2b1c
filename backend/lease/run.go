package lease

import (
	"context"
	"errors"
	"time"
)

// Run does work while this owner holds l, until ctx is done. It tries to
// take l at once (so a restarted replica picks up where the last holder
// stopped), and again every `every` while another owner holds it. While l
// is held, Run calls work at once and then `every` after each call
// returns; work's context ends when the lease is lost or ctx ends. A work
// that loops on its own (a delivery loop) just returns when its context
// is done. Errors of work are logged unless the lease ended under it.
// Run releases the lease and returns nil once ctx is done.
//
// The lease runs on real time, whatever clock the caller's domain logic
// uses: its expiry is Redis's.
func Run(ctx context.Context, l *Lease, every time.Duration, work func(held context.Context) error) error {
	log := l.log.With().Str("token", l.token).Logger()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		held, release, err := l.Hold(ctx)
		switch {
		case err == nil:
			log.Info().Msg("lease taken: this replica does the work")
			hold(held, t.C, work, func(err error) { log.Error().Err(err).Msg("work under lease") })
			release()
			if ctx.Err() == nil {
				log.Warn().Msg("lease lost: another replica does the work")
			}
		case errors.Is(err, ErrHeld):
		case ctx.Err() == nil:
			log.Warn().Err(err).Msg("take lease")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// hold calls work at once and then at every tick until held ends.
func hold(held context.Context, tick <-chan time.Time, work func(context.Context) error, failed func(error)) {
	for {
		if err := work(held); err != nil && held.Err() == nil {
			failed(err)
		}
		if held.Err() != nil { // a tick may be ready too: select would pick at random
			return
		}
		select {
		case <-held.Done():
			return
		case <-tick:
		}
	}
}
