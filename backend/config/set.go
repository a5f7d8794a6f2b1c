package config

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// maxTxRetries bounds the optimistic retries of one device update.
const maxTxRetries = 20

// Result is the outcome of Set.
type Result struct {
	State
	// Changed is false when the patch left the desired config as it was:
	// then no version was created and nothing was sent.
	Changed bool                 `json:"changed"`
	Changes []topics.FieldChange `json:"changes"`
}

// Set applies an operator's partial config document (e.g.
// {"sampling_interval":10}) to dev's desired config: only the given fields
// change, starting from the current desired config (for a device never
// configured, the config it reported at birth, else the factory default). The result is checked against every rule
// first; an invalid document is a CodeInvalid error naming the field and
// the reason, an unknown device CodeNotFound, and neither changes anything.
// A valid change creates the next version atomically, records it in the
// history, emits a config event and sends the new version to the device.
func (s *Service) Set(ctx context.Context, dev string, patch []byte, who Who) (Result, error) {
	if topics.ValidateID(dev) != nil {
		return Result{}, notFound(dev)
	}
	u, err := topics.ParseConfigPatch(patch)
	if err != nil {
		// An unknown device is the better answer when both are wrong.
		if _, rerr := s.read(ctx, s.rdb, dev); rerr != nil {
			return Result{}, rerr
		}
		return Result{}, backend.Invalid(err)
	}
	var res Result
	var created Entry
	txf := func(tx *redis.Tx) error {
		r, err := s.read(ctx, tx, dev)
		if err != nil {
			return err
		}
		if err := s.changeable(ctx, tx, dev); err != nil {
			return err
		}
		next, err := topics.ApplyPatch(r.desired, u)
		if err != nil {
			return backend.Invalid(err)
		}
		_, ack := topics.ValidateUpdate(r.desired, u)
		res = Result{Changes: ack.Accepted}
		if next.Equal(r.desired) {
			res.State, res.Changes = r.state(dev), []topics.FieldChange{}
			return nil
		}
		// Above anything the device has seen, so that it never takes the
		// new version for a stale one (e.g. after backend state was lost).
		version := max(r.version, r.reportedVer) + 1
		now := s.now().UTC()
		created = Entry{Type: EntryDesired, Version: version, At: now, By: who.By, Via: who.Via,
			Changes: ack.Accepted, Config: &next}
		desired, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("set config %s: %w", dev, err)
		}
		hist, err := s.historyArgs(dev, created)
		if err != nil {
			return fmt.Errorf("set config %s: %w", dev, err)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, s.cfgKey(dev),
				fVersion, version, fDesired, desired, fDesiredAt, now.UnixMilli(),
				fDesiredBy, who.By, fDesiredVia, who.Via, fPending, "1", fSends, 0)
			p.XAdd(ctx, hist)
			return nil
		})
		if err != nil {
			return err
		}
		r.version, r.desired, r.pending = version, next, true
		r.h[fDesiredAt], r.h[fDesiredBy], r.h[fDesiredVia] = fmt.Sprint(now.UnixMilli()), who.By, who.Via
		res.State, res.Changed = r.state(dev), true
		return nil
	}
	if err := s.watch(ctx, txf, s.keys.Device(dev), s.cfgKey(dev)); err != nil {
		return Result{}, backend.Unavailable("set config "+dev, err)
	}
	if !res.Changed {
		return res, nil
	}
	s.m.versions.Inc()
	s.log.Info().Str("device", dev).Int64("version", created.Version).Str("by", who.By).Str("via", who.Via).
		Msg("desired config version created")
	if err := s.rdb.ZAdd(ctx, s.pendingKey(), redis.Z{Score: float64(created.At.UnixMilli()), Member: dev}).Err(); err != nil {
		// The birth handler still redelivers; only the sweep misses it.
		s.log.Error().Err(err).Str("device", dev).Msg("config pending index")
	}
	if err := s.deliver(ctx, dev, false); err != nil {
		// The version exists; birth and the sweep deliver it later.
		s.log.Warn().Err(err).Str("device", dev).Int64("version", created.Version).Msg("config not sent now; it will be redelivered")
	}
	if err := s.b.Emit(ctx, dev, topics.EventConfig, map[string]any{
		"status": "desired", "version": created.Version, "by": who.By, "via": who.Via,
		"changes": created.Changes, "config": created.Config,
	}); err != nil {
		s.log.Error().Err(err).Str("device", dev).Msg("emit config event")
	}
	if st, err := s.Get(ctx, dev); err == nil {
		res.State = st
	}
	return res, nil
}

// watch runs fn in a WATCH transaction on keys, retrying when another
// writer got in first.
func (s *Service) watch(ctx context.Context, fn func(*redis.Tx) error, keys ...string) error {
	for range maxTxRetries {
		err := s.rdb.Watch(ctx, fn, keys...)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
	}
	return backend.Errorf(backend.CodeConflict, "", "config of this device is changing too fast; try again")
}

// handleOps handles a partial config document an operator (an admin:
// backend.Service checks the role) published on
// ecowatt/v1/ops/{dev}/config. Errors become a "rejected" config event
// (backend.Service does that).
func (s *Service) handleOps(ctx context.Context, dev, operator string, body []byte) error {
	_, err := s.Set(ctx, dev, body, Who{By: operator, Via: ViaMQTT})
	return err
}
