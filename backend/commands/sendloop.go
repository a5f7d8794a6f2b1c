package commands

import (
	"context"
	"github.com/ecowatt/ecowatt/backend"
	"hash/fnv"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/redis/go-redis/v9"
)

// wakeKey is the hash of devices the delivery lease holder must look at:
// field device, value "1" to resend everything unfinished, else "0".
func (s *Service) wakeKey() string { return s.keys.Global("cmdwake") }

// kick asks the delivery lease holder, whichever replica it is, to look at
// dev; all also repeats every command that is sent or delivered but not
// finished (after a reconnect). On the holder the device goes straight to
// its delivery shard, without a round trip; elsewhere it is recorded in
// cmdwake, which the holder reads every DeliveryTick. When that write
// fails the sweep still finds dev's queued commands within SweepInterval.
// When the holder loses its lease before it delivers, the next holder
// sends every unfinished command at takeover, so nothing waits on the
// lost wake-up.
func (s *Service) kick(ctx context.Context, dev string, all bool) {
	if s.wakeLocal(dev, all) {
		return
	}
	var err error
	if all {
		err = s.rdb.HSet(ctx, s.wakeKey(), dev, "1").Err()
	} else {
		err = s.rdb.HSetNX(ctx, s.wakeKey(), dev, "0").Err()
	}
	if err != nil {
		s.log.Warn().Err(err).Str("device", dev).Msg("wake sender: the sweep will find the device")
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// wakeLocal hands dev to its delivery shard when this replica holds the
// delivery lease, and reports whether it did.
func (s *Service) wakeLocal(dev string, all bool) bool {
	s.shardMu.Lock()
	defer s.shardMu.Unlock()
	if s.shards == nil {
		return false
	}
	s.shards.add(dev, all)
	return true
}

// setShards publishes (or, with nil, withdraws) the delivery shards that
// kick hands devices to.
func (s *Service) setShards(sh shards) {
	s.shardMu.Lock()
	s.shards = sh
	s.shardMu.Unlock()
}

// takeWoken reads and clears the devices to look at, in one MULTI on the
// one key. Most ticks find none: one EXISTS first spares the MULTI,
// HGETALL, DEL and EXEC (a device woken just after it waits one tick).
func (s *Service) takeWoken(ctx context.Context) (map[string]bool, error) {
	n, err := s.rdb.Exists(ctx, s.wakeKey()).Result()
	if err != nil {
		return nil, backend.Unavailable("woken devices", err)
	}
	if n == 0 {
		return nil, nil
	}
	var get *redis.MapStringStringCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		get = p.HGetAll(ctx, s.wakeKey())
		p.Del(ctx, s.wakeKey())
		return nil
	})
	if err != nil {
		return nil, backend.Unavailable("woken devices", err)
	}
	out := make(map[string]bool, len(get.Val()))
	for dev, v := range get.Val() {
		out[dev] = v == "1"
	}
	return out, nil
}

// sendLoop sends commands while this replica holds the delivery lease:
// only the lease holder sends, through DeliveryWorkers shards, each a
// goroutine that delivers to its devices one after the other; a device
// always maps to the same shard, so its commands leave in queue order,
// while different devices go out in parallel. Devices woken on this
// replica reach their shard at once (kick); those other replicas woke
// are read from cmdwake every DeliveryTick.
func (s *Service) sendLoop(ctx context.Context) {
	lease.Run(ctx, s.delivery, s.cfg.DeliveryTick, func(held context.Context) error {
		sh := newShards(s.cfg.DeliveryWorkers)
		// Every unfinished command goes again before anything newer: the
		// takeover's devices are in their shards before kicks can add more.
		s.takeOver(held, sh)
		var wg sync.WaitGroup
		defer func() {
			s.setShards(nil)
			wg.Wait()
			if left := sh.drain(); len(left) > 0 {
				s.putBack(left)
			}
		}()
		for _, one := range sh {
			wg.Go(func() { s.sendShard(held, one) })
		}
		s.setShards(sh)
		t := time.NewTicker(s.cfg.DeliveryTick)
		defer t.Stop()
		for {
			s.shardWoken(held, sh)
			select {
			case <-held.Done():
				return nil
			case <-s.wake:
			case <-t.C:
			}
		}
	})
}

// sendShard sends to the devices of one shard until ctx is done; a device
// cut short goes back to the shard, which sendLoop hands back to
// cmdwake.
func (s *Service) sendShard(ctx context.Context, sh *shard) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sh.ready:
		}
		for {
			dev, all, ok := sh.next()
			if !ok {
				break
			}
			err := s.sendDevice(ctx, dev, all)
			if ctx.Err() != nil {
				sh.add(dev, all)
				return
			}
			if err != nil {
				s.log.Error().Err(err).Str("device", dev).Msg("command delivery")
			}
		}
	}
}

// takeOver runs when this replica takes the delivery lease: the last
// holder (a replica that died, or this process's predecessor) may have
// sent commands that never arrived and lost results that did, so every
// device with unfinished commands gets all of them again, in queue order,
// before anything newer (the device answers known IDs from its flash).
// It puts those devices in their shards; the workers send.
func (s *Service) takeOver(ctx context.Context, sh shards) {
	it := s.rdb.ZScan(ctx, s.activeDevices(), 0, "", 1000).Iterator()
	n := 0
	for i := 0; it.Next(ctx); i++ {
		if i%2 == 1 { // ZSCAN yields member, score, member, score, ...
			continue
		}
		sh.add(it.Val(), true)
		n++
	}
	if err := it.Err(); err != nil && ctx.Err() == nil {
		s.log.Error().Err(backend.Unavailable("command takeover", err)).Msg("command delivery")
	}
	if n > 0 {
		s.log.Info().Int("devices", n).Msg("delivery taken over: unfinished commands are sent again")
	}
}

// shardWoken hands the devices other replicas woke to their shards.
func (s *Service) shardWoken(ctx context.Context, sh shards) {
	woken, err := s.takeWoken(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error().Err(err).Msg("command delivery")
		}
		return
	}
	for dev, all := range woken {
		sh.add(dev, all)
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

// shards are the delivery lease holder's work queues; a device always
// lands in the same one.
type shards []*shard

func newShards(n int) shards {
	sh := make(shards, n)
	for i := range sh {
		sh[i] = &shard{pending: map[string]bool{}, ready: make(chan struct{}, 1)}
	}
	return sh
}

func (sh shards) add(dev string, all bool) {
	h := fnv.New32a()
	h.Write([]byte(dev))
	sh[h.Sum32()%uint32(len(sh))].add(dev, all)
}

// drain empties every shard and returns what was in them.
func (sh shards) drain() map[string]bool {
	out := map[string]bool{}
	for _, one := range sh {
		for {
			dev, all, ok := one.next()
			if !ok {
				break
			}
			out[dev] = out[dev] || all
		}
	}
	return out
}

// shard is one delivery worker's queue of devices, first come first
// served; a device is in it at most once.
type shard struct {
	mu      sync.Mutex      // guards queue and pending
	queue   []string        // devices in the order they were woken
	pending map[string]bool // the devices in queue -> resend everything unfinished
	ready   chan struct{}   // capacity 1: the queue may be non-empty
}

func (sh *shard) add(dev string, all bool) {
	sh.mu.Lock()
	prev, queued := sh.pending[dev]
	if !queued {
		sh.queue = append(sh.queue, dev)
	}
	sh.pending[dev] = prev || all
	sh.mu.Unlock()
	select {
	case sh.ready <- struct{}{}:
	default:
	}
}

func (sh *shard) next() (dev string, all, ok bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.queue) == 0 {
		return "", false, false
	}
	dev = sh.queue[0]
	sh.queue[0] = ""
	sh.queue = sh.queue[1:]
	all = sh.pending[dev]
	delete(sh.pending, dev)
	return dev, all, true
}

// sweepLoop sweeps while this replica holds the sweep lease: at once (so
// a restarted backend picks up where the last one stopped) and then every
// SweepInterval.
func (s *Service) sweepLoop(ctx context.Context) {
	lease.Run(ctx, s.sweeper, s.cfg.SweepInterval, s.sweep)
}
