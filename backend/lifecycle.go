package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// Lifecycle states of a device (Device.State).
const (
	StateActive         = "active"
	StateDisabled       = "disabled"
	StateDecommissioned = "decommissioned"
)

// Fields of the device hash that hold the lifecycle state. A device hash
// without fState is active (devices provisioned before lifecycles).
const (
	fState       = "state"
	fStateReason = "state_reason"
	fStateBy     = "state_by"
	fStateAt     = "state_at" // unix ms of the last change
)

// FieldState is the device hash field with the lifecycle state, for the
// services' Lua scripts that refuse work for a decommissioned device.
const FieldState = fState

// ErrDisabled and ErrDecommissioned are wrapped by DeviceAccess (and so by
// the broker's connect check) and by services refusing work for a device
// in that state; they carry no code of their own so that callers branch
// with errors.Is.
var (
	ErrDisabled       = errors.New("device disabled")
	ErrDecommissioned = errors.New("device decommissioned")
)

// Lifecycle changes, as LifecycleHandler sees them.
const (
	ChangeDisable      = "disable"
	ChangeEnable       = "enable"
	ChangeDecommission = "decommission"
	ChangePurge        = "purge"
)

// LifecycleChange is one change handed to the LifecycleHandlers.
type LifecycleChange struct {
	Device string
	Change string // Change*
	// CancelCommands is set on a disable with ?cancel_commands=true; a
	// decommission always cancels.
	CancelCommands bool
	By, Reason     string
}

// LifecycleHandler lets a service that keeps per-device state outside the
// device's own keys (commands, config, FOTA) act on a change: cancel its
// work on a decommission, drop its fleet-wide index entries on a purge.
// It must be idempotent: a repeated DELETE runs it again.
type LifecycleHandler func(ctx context.Context, c LifecycleChange) error

// HandleLifecycle adds h; handlers run in the order they were added.
func (s *Service) HandleLifecycle(h LifecycleHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifecycle = append(s.lifecycle, h)
}

// SessionCloser is what the Bus may offer to close a device's live MQTT
// session at once (the embedded broker does). It reaches only the
// sessions of this replica's broker.
type SessionCloser interface {
	CloseSession(clientID, reason string) bool
}

// Who names who changed a device and why, for its record and audit event.
type Who struct {
	By     string // operator; "api" when unknown
	Reason string
}

// stateScript moves a device between lifecycle states.
// KEYS: dev hash. ARGV: to, reason, by, now ms, allowed from states
// (space-separated; "active" also matches no state field).
// Returns {0} unknown device, {1, prev} changed, {2, cur} already in
// state to (nothing written), {-1, cur} not allowed from cur.
var stateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local cur = redis.call('HGET', KEYS[1], 'state') or 'active'
if cur == ARGV[1] then return {2, cur} end
local ok = false
for st in string.gmatch(ARGV[5], '%S+') do
  if st == cur then ok = true end
end
if not ok then return {-1, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'state_reason', ARGV[2], 'state_by', ARGV[3], 'state_at', ARGV[4])
return {1, cur}
`)

// transition runs stateScript and says whether it changed anything.
func (s *Service) transition(ctx context.Context, id, to string, who Who, from ...string) (changed bool, cur string, err error) {
	if topics.ValidateID(id) != nil {
		return false, "", Errorf(CodeNotFound, "id", "no device %q", id)
	}
	res, err := stateScript.Run(ctx, s.rdb, []string{s.keys.Device(id)},
		to, who.Reason, who.By, s.now().UnixMilli(), strings.Join(from, " ")).Slice()
	if err != nil {
		return false, "", Unavailable(to+" "+id, err)
	}
	code, _ := res[0].(int64)
	if len(res) > 1 {
		cur, _ = res[1].(string)
	}
	switch code {
	case 0:
		return false, "", Errorf(CodeNotFound, "id", "no device %q", id)
	case -1:
		return false, cur, &Error{Code: CodeConflict, Field: "state", Err: ErrDecommissioned,
			Message: fmt.Sprintf("device %s is %s; only a purge (DELETE ?purge=true) changes it now", id, cur)}
	}
	return code == 1, cur, nil
}

// MaxReasonLen bounds a lifecycle reason.
const MaxReasonLen = 256

func checkWho(who *Who) error {
	if who.By == "" {
		who.By = "api"
	}
	if len(who.Reason) > MaxReasonLen {
		return Errorf(CodeInvalid, "reason", "reason must be at most %d bytes", MaxReasonLen)
	}
	return nil
}

// Disable refuses device id's connections from now on and closes its live
// session on this replica. Its queued commands stay queued unless
// cancelCommands. Disabling a disabled device changes nothing (its first
// reason stays) but still cancels commands when asked; a decommissioned
// device is CodeConflict, an unknown one CodeNotFound.
func (s *Service) Disable(ctx context.Context, id string, who Who, cancelCommands bool) (Device, error) {
	if err := checkWho(&who); err != nil {
		return Device{}, err
	}
	changed, _, err := s.transition(ctx, id, StateDisabled, who, StateActive)
	if err != nil {
		return Device{}, err
	}
	s.cache.forget(id)
	s.closeSession(id, "device disabled")
	if changed {
		s.log.Info().Str("device", id).Str("by", who.By).Str("reason", who.Reason).Msg("device disabled")
		s.emitLifecycle(ctx, id, StateDisabled, who, map[string]any{"cancel_commands": cancelCommands})
	}
	if cancelCommands {
		if err := s.runLifecycle(ctx, LifecycleChange{Device: id, Change: ChangeDisable, CancelCommands: true, By: who.By, Reason: who.Reason}); err != nil {
			return Device{}, err
		}
	}
	return s.Device(ctx, id)
}

// Enable lets a disabled device connect again; everything it had (key,
// config, queued commands, history) is as it was. Enabling an active
// device changes nothing and succeeds; a decommissioned device is
// CodeConflict, an unknown one CodeNotFound.
func (s *Service) Enable(ctx context.Context, id string, who Who) (Device, error) {
	if err := checkWho(&who); err != nil {
		return Device{}, err
	}
	changed, _, err := s.transition(ctx, id, StateActive, who, StateDisabled)
	if err != nil {
		return Device{}, err
	}
	if changed {
		s.log.Info().Str("device", id).Str("by", who.By).Msg("device enabled")
		s.emitLifecycle(ctx, id, StateActive, who, nil)
		if err := s.runLifecycle(ctx, LifecycleChange{Device: id, Change: ChangeEnable, By: who.By, Reason: who.Reason}); err != nil {
			return Device{}, err
		}
	}
	return s.Device(ctx, id)
}

// decommissionScript marks a device decommissioned and destroys its key
// and presence. KEYS: dev hash, psk. ARGV: reason, by, now ms.
// Returns 0 unknown device, 1 done, 2 already decommissioned.
var decommissionScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') == 'decommissioned' then return 2 end
redis.call('HSET', KEYS[1], 'state', 'decommissioned', 'state_reason', ARGV[1], 'state_by', ARGV[2],
  'state_at', ARGV[3], 'online', '0')
return 1
`)

// Decommission retires device id for good: its key is destroyed (here and
// in this replica's key cache), its session on this replica closed, its
// unfinished commands and firmware update cancelled and it leaves the
// device and online indexes. Its record, audit timeline and command and
// config history stay readable (State "decommissioned") until Purge. A
// repeated Decommission runs the clean-up again (it is idempotent) and
// emits no second event. An unknown device is CodeNotFound.
func (s *Service) Decommission(ctx context.Context, id string, who Who) (Device, error) {
	if err := checkWho(&who); err != nil {
		return Device{}, err
	}
	if topics.ValidateID(id) != nil {
		return Device{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	n, err := decommissionScript.Run(ctx, s.rdb, []string{s.keys.Device(id), s.keys.PSK(id)},
		who.Reason, who.By, s.now().UnixMilli()).Int()
	if err != nil {
		return Device{}, Unavailable("decommission "+id, err)
	}
	if n == 0 {
		return Device{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	s.cache.forget(id)
	s.closeSession(id, "device decommissioned")
	if err := s.unindex(ctx, id); err != nil {
		return Device{}, err
	}
	if err := s.runLifecycle(ctx, LifecycleChange{Device: id, Change: ChangeDecommission, CancelCommands: true, By: who.By, Reason: who.Reason}); err != nil {
		return Device{}, err
	}
	if n == 1 {
		s.log.Warn().Str("device", id).Str("by", who.By).Str("reason", who.Reason).Msg("device decommissioned: key destroyed")
		s.emitLifecycle(ctx, id, StateDecommissioned, who, nil)
	}
	return s.Device(ctx, id)
}

// Purge decommissions device id if it is not yet, then deletes every key
// of it (record, timeline, history, telemetry, replay window) and its
// entries in the services' indexes, so that the ID can be provisioned
// again with a new key and a fresh history. An unknown device is
// CodeNotFound.
//
// The device's keys are found by SCAN over its key pattern (on every
// master of a Cluster): a purge is rare, and the per-device key names of
// every service need not be listed here.
func (s *Service) Purge(ctx context.Context, id string, who Who) error {
	if _, err := s.Decommission(ctx, id, who); err != nil {
		return err
	}
	if err := s.runLifecycle(ctx, LifecycleChange{Device: id, Change: ChangePurge, By: who.By, Reason: who.Reason}); err != nil {
		return err
	}
	if err := s.deleteMatching(ctx, store.GlobEscape(s.keys.Prefix()+"{dev:"+id+"}:")+"*"); err != nil {
		return Unavailable("purge "+id, err)
	}
	s.cache.forget(id)
	s.log.Warn().Str("device", id).Str("by", who.By).Msg("device purged: every record deleted")
	return nil
}

// unindex drops id from the fleet-wide device, online and label indexes
// (other slots than the device's, so not in decommissionScript), so that
// no selector finds a decommissioned device. PatchLabels refuses one, so
// nothing adds it back.
func (s *Service) unindex(ctx context.Context, id string) error {
	raw, err := s.rdb.HGet(ctx, s.keys.Device(id), fLabels).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Unavailable("unindex "+id, err)
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, s.keys.Devices(), id)
		p.ZRem(ctx, s.keys.Online(), id)
		for k, v := range decodeLabels(raw) {
			p.SRem(ctx, s.keys.LabelIndex(k, v), id)
			p.SRem(ctx, s.keys.LabelKeyIndex(k), id)
		}
		return nil
	})
	if err != nil {
		return Unavailable("unindex "+id, err)
	}
	return nil
}

// deleteMatching deletes every key matching pattern, on each master of a
// Cluster (a device's keys share one slot, so one node holds them all).
func (s *Service) deleteMatching(ctx context.Context, pattern string) error {
	del := func(ctx context.Context, c redis.Cmdable) error {
		it := c.Scan(ctx, 0, pattern, 500).Iterator()
		var batch []string
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := c.Del(ctx, batch...).Err()
			batch = batch[:0]
			return err
		}
		for it.Next(ctx) {
			batch = append(batch, it.Val())
			if len(batch) >= 500 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		return flush()
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return del(ctx, c) })
	}
	return del(ctx, s.rdb)
}

// DeviceAccess is the connect-time check of device id: its state is read
// from Redis on every call (never cached, so that a device disabled on
// another replica cannot connect here), then its keys. A disabled device
// is an error wrapping ErrDisabled, a decommissioned one ErrDecommissioned.
// It is an Accounts method: the broker, built before the Service, asks it.
func (a *Accounts) DeviceAccess(ctx context.Context, id string) error {
	if topics.ValidateID(id) != nil {
		return Errorf(CodeNotFound, "id", "no device %q", id)
	}
	st, err := a.rdb.HGet(ctx, a.keys.Device(id), fState).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil // active, or unknown: DeviceKeys says which
	case err != nil:
		return Unavailable("device state "+id, err)
	case st == StateDisabled:
		return fmt.Errorf("device %s: %w", id, ErrDisabled)
	case st == StateDecommissioned:
		return fmt.Errorf("device %s: %w", id, ErrDecommissioned)
	}
	return nil
}

func (s *Service) closeSession(id, reason string) {
	c, ok := s.bus.(SessionCloser)
	if !ok {
		s.log.Warn().Str("device", id).Msg("this broker cannot close sessions: the device's session stays until it reconnects (then it is refused)")
		return
	}
	if c.CloseSession(id, reason) {
		s.log.Info().Str("device", id).Str("reason", reason).Msg("device session closed")
	}
}

func (s *Service) runLifecycle(ctx context.Context, c LifecycleChange) error {
	s.mu.RLock()
	hs := append([]LifecycleHandler(nil), s.lifecycle...)
	s.mu.RUnlock()
	var errs []error
	for _, h := range hs {
		if err := h(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s %s: %w", c.Change, c.Device, errors.Join(errs...))
	}
	return nil
}

func (s *Service) emitLifecycle(ctx context.Context, id, state string, who Who, extra map[string]any) {
	data := map[string]any{"state": state, "by": who.By}
	if who.Reason != "" {
		data["reason"] = who.Reason
	}
	for k, v := range extra {
		data[k] = v
	}
	if err := s.Emit(ctx, id, topics.EventLifecycle, data); err != nil {
		s.log.Error().Err(err).Str("device", id).Msg("emit lifecycle event")
	}
}
