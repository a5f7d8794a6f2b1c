package backend

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// PSK rotation over the air (PROTOCOL.md section 15). A rotation is one
// hash per device, {dev:ID}:rotation, beside the device's psk: the new key
// sealed with the vault while it is pending, and the record of the steps.
// It is pending until the first valid uplink under the new key promotes
// it (the new key replaces the old, which is destroyed), or until its
// overlap ends (it is then expired: the pending key is destroyed and the
// old key stays). Expiry is applied lazily, when a rotation is read: no
// timer per device.

// Defaults of Config.KeyOverlap and Config.KeyResend.
const (
	DefaultKeyOverlap = 24 * time.Hour
	DefaultKeyResend  = 30 * time.Second
)

// Rotation states.
const (
	RotationPending   = "pending"
	RotationConfirmed = "confirmed"
	RotationExpired   = "expired"
)

// Rotation is a device's latest key rotation, as the API shows it.
type Rotation struct {
	ID          string     `json:"id"`
	Device      string     `json:"device"`
	State       string     `json:"state"`
	By          string     `json:"by"`
	StartedAt   time.Time  `json:"started_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	Sent        int64      `json:"sent"` // rotate_key downlinks sent
	LastSentAt  *time.Time `json:"last_sent_at,omitempty"`
	ConfirmedAt *time.Time `json:"confirmed_at,omitempty"`
	ConfirmedBy string     `json:"confirmed_via,omitempty"` // the uplink kind that first used the new key
}

func (s *Service) rotationKey(id string) string { return s.keys.Dev(id, "rotation") }

// rotationIndex is the fleet-wide set of devices with a rotation that may
// be pending (score: its expiry), walked by rotationLoop. A member whose
// rotation is no longer pending is removed by the walk.
func (s *Service) rotationIndex() string { return s.keys.Global("rotations") }

// rotationSweepBatch bounds one walk of rotationIndex.
const rotationSweepBatch = 1000

// startRotationScript records a new pending rotation unless one is
// pending and not expired. KEYS: dev hash, rotation. ARGV: id, sealed, now
// ms, expires ms, by. Returns {1, id of a pending rotation found expired
// or ""}, {0} unknown device, {-1, pending id, expires ms}.
var startRotationScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local dst = redis.call('HGET', KEYS[1], 'state')
if dst == 'disabled' or dst == 'decommissioned' then return {-2, dst} end
local st = redis.call('HMGET', KEYS[2], 'state', 'id', 'expires_at')
local old = ''
if st[1] == 'pending' then
  if tonumber(st[3]) > tonumber(ARGV[3]) then return {-1, st[2], st[3]} end
  old = st[2]
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'state', 'pending', 'sealed', ARGV[2],
  'started_at', ARGV[3], 'expires_at', ARGV[4], 'by', ARGV[5], 'sent', 0)
return {1, old}
`)

// promoteScript makes the pending key the device's key. KEYS: psk,
// rotation. ARGV: id, now ms, via. Returns 1 promoted, 2 already
// confirmed, 0 not pending (expired, replaced or none).
var promoteScript = redis.NewScript(`
local st = redis.call('HMGET', KEYS[2], 'state', 'id', 'expires_at', 'sealed')
if st[2] ~= ARGV[1] then return 0 end
if st[1] == 'confirmed' then return 2 end
if st[1] ~= 'pending' or tonumber(st[3]) <= tonumber(ARGV[2]) or not st[4] then return 0 end
redis.call('SET', KEYS[1], st[4])
redis.call('HDEL', KEYS[2], 'sealed')
redis.call('HSET', KEYS[2], 'state', 'confirmed', 'confirmed_at', ARGV[2], 'confirmed_via', ARGV[3])
return 1
`)

// expireScript expires a pending rotation whose overlap has ended.
// KEYS: rotation. ARGV: now ms. Returns the rotation id, or "".
var expireScript = redis.NewScript(`
local st = redis.call('HMGET', KEYS[1], 'state', 'id', 'expires_at')
if st[1] ~= 'pending' or tonumber(st[3]) > tonumber(ARGV[1]) then return '' end
redis.call('HDEL', KEYS[1], 'sealed')
redis.call('HSET', KEYS[1], 'state', 'expired')
return st[2]
`)

// resendScript claims one transmission of a pending rotation: when it is
// pending, not expired, and force is "1" or the last one is at least gap
// ms old. KEYS: rotation. ARGV: now ms, gap ms, force. Returns {sealed,
// id, attempt} or nil.
var resendScript = redis.NewScript(`
local st = redis.call('HMGET', KEYS[1], 'state', 'id', 'expires_at', 'sealed', 'last_sent')
if st[1] ~= 'pending' or tonumber(st[3]) <= tonumber(ARGV[1]) or not st[4] then return false end
if ARGV[3] ~= '1' and st[5] and tonumber(ARGV[1]) - tonumber(st[5]) < tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'last_sent', ARGV[1])
local n = redis.call('HINCRBY', KEYS[1], 'sent', 1)
return {st[4], st[2], n}
`)

// StartRotation starts a key rotation of device id by operator by: a new
// random 256-bit key, sealed and stored as pending beside the current
// one, sent at once when the device is online and otherwise at its next
// birth. An unknown device is CodeNotFound; a rotation already pending is
// CodeConflict naming it (it goes on unchanged). Neither changes anything.
func (s *Service) StartRotation(ctx context.Context, id, by string) (Rotation, error) {
	if topics.ValidateID(id) != nil {
		return Rotation{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	now := s.now()
	rid, err := ulid.New(ulid.Timestamp(now), s.random)
	if err != nil {
		return Rotation{}, fmt.Errorf("rotate key %s: %w", id, err)
	}
	psk := make([]byte, envelope.KeySize)
	if _, err := io.ReadFull(s.random, psk); err != nil {
		return Rotation{}, fmt.Errorf("rotate key %s: read random: %w", id, err)
	}
	sealed, err := s.vault.Seal(id, psk)
	clear(psk)
	if err != nil {
		return Rotation{}, fmt.Errorf("rotate key %s: %w", id, err)
	}
	expires := now.Add(s.cfg.KeyOverlap)
	res, err := startRotationScript.Run(ctx, s.rdb, []string{s.keys.Device(id), s.rotationKey(id)},
		rid.String(), sealed, now.UnixMilli(), expires.UnixMilli(), by).Slice()
	if err != nil {
		return Rotation{}, Unavailable("rotate key "+id, err)
	}
	switch code, _ := res[0].(int64); code {
	case 0:
		return Rotation{}, Errorf(CodeNotFound, "id", "no device %q", id)
	case -2:
		// A disabled device cannot connect to take the key, and a
		// decommissioned one has none left to replace.
		state, _ := res[1].(string)
		e := Errorf(CodeConflict, "id", "device %s is %s; enable it before rotating its key", id, state)
		e.Err = ErrDisabled
		if state == StateDecommissioned {
			e.Err = ErrDecommissioned
		}
		return Rotation{}, e
	case -1:
		pid, _ := res[1].(string)
		exp := msTime(fmt.Sprint(res[2]))
		return Rotation{}, Errorf(CodeConflict, "id",
			"device %s has key rotation %s pending until %s; it continues, and a new one can start when it is confirmed or expired",
			id, pid, exp.Format(time.RFC3339))
	}
	s.cache.forget(id)
	// The index is another slot, written after the rotation; a member
	// left behind by a failure here is removed by the walk.
	if err := s.rdb.ZAdd(ctx, s.rotationIndex(), redis.Z{Score: float64(expires.UnixMilli()), Member: id}).Err(); err != nil {
		s.log.Warn().Err(err).Str("device", id).Msg("rotation index: rotate_key is sent at births only")
	}
	if old, _ := res[1].(string); old != "" {
		s.emitKey(ctx, id, map[string]any{"state": RotationExpired, "rotation": old})
	}
	s.emitKey(ctx, id, map[string]any{"state": RotationPending, "rotation": rid.String(), "by": by,
		"expires_at": expires.UTC().Format(time.RFC3339)})
	s.log.Info().Str("device", id).Str("rotation", rid.String()).Str("by", by).Msg("key rotation started")
	if d, err := s.Device(ctx, id); err == nil && d.Online {
		if err := s.sendRotation(ctx, id, true, "start"); err != nil {
			s.log.Warn().Err(err).Str("device", id).Msg("rotate_key not sent; it is sent again at the next birth")
		}
	}
	return s.Rotation(ctx, id)
}

// Rotation returns device id's latest key rotation, expiring it first when
// its overlap has ended. CodeNotFound when the device never had one.
func (s *Service) Rotation(ctx context.Context, id string) (Rotation, error) {
	if topics.ValidateID(id) != nil {
		return Rotation{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	s.expireRotation(ctx, id)
	h, err := s.rdb.HGetAll(ctx, s.rotationKey(id)).Result()
	if err != nil {
		return Rotation{}, Unavailable("rotation "+id, err)
	}
	if len(h) == 0 {
		return Rotation{}, Errorf(CodeNotFound, "id", "device %q has no key rotation", id)
	}
	r := Rotation{ID: h["id"], Device: id, State: h["state"], By: h["by"], Sent: atoi(h["sent"]),
		LastSentAt: msTime(h["last_sent"]), ConfirmedAt: msTime(h["confirmed_at"]), ConfirmedBy: h["confirmed_via"]}
	if t := msTime(h["started_at"]); t != nil {
		r.StartedAt = *t
	}
	if t := msTime(h["expires_at"]); t != nil {
		r.ExpiresAt = *t
	}
	return r, nil
}

// expireRotation applies the end of the overlap to a pending rotation and
// records it; store errors are logged (the next read tries again).
func (s *Service) expireRotation(ctx context.Context, id string) {
	rid, err := expireScript.Run(ctx, s.rdb, []string{s.rotationKey(id)}, s.now().UnixMilli()).Text()
	if err != nil {
		s.log.Warn().Err(err).Str("device", id).Msg("expire key rotation")
		return
	}
	if rid != "" {
		s.log.Warn().Str("device", id).Str("rotation", rid).Msg("key rotation expired: the old key stays; rotate again")
		s.emitKey(ctx, id, map[string]any{"state": RotationExpired, "rotation": rid})
	}
}

// sendRotation sends rotate_key, always encrypted and under the current
// key, when a rotation is pending and (unless force) the last send is
// older than KeyResend.
func (s *Service) sendRotation(ctx context.Context, id string, force bool, via string) error {
	f := "0"
	if force {
		f = "1"
	}
	res, err := resendScript.Run(ctx, s.rdb, []string{s.rotationKey(id)},
		s.now().UnixMilli(), s.cfg.KeyResend.Milliseconds(), f).Slice()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return Unavailable("rotate_key "+id, err)
	}
	sealed, _ := res[0].(string)
	rid, _ := res[1].(string)
	attempt, _ := res[2].(int64)
	psk, err := s.vault.Open(id, []byte(sealed))
	if err != nil {
		return fmt.Errorf("rotate_key %s: %w", id, err)
	}
	body, err := json.Marshal(map[string]topics.RotateKey{"rotate_key": {ID: rid, Key: hex.EncodeToString(psk)}})
	clear(psk)
	if err != nil {
		return fmt.Errorf("rotate_key %s: %w", id, err)
	}
	err = s.send(ctx, id, topics.KindRotateKey, body, true)
	clear(body)
	if err != nil {
		return err
	}
	s.emitKey(ctx, id, map[string]any{"state": "sent", "rotation": rid, "attempt": attempt, "via": via})
	return nil
}

// rotationLoop sends pending rotations again every KeyResend to online
// devices (a rotate_key may be lost in the broker), and expires those
// whose overlap has ended. The claim in resendScript keeps replicas from
// sending one twice within KeyResend.
func (s *Service) rotationLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.KeyResend)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.rotationIndex(), Start: 0, Stop: rotationSweepBatch - 1}).Result()
		if err != nil {
			s.log.Warn().Err(err).Msg("rotation sweep")
			continue
		}
		for _, id := range ids {
			s.expireRotation(ctx, id)
			v, err := s.rdb.HMGet(ctx, s.rotationKey(id), "state").Result()
			if err != nil {
				continue
			}
			if st, _ := v[0].(string); st != RotationPending {
				s.rdb.ZRem(ctx, s.rotationIndex(), id)
				continue
			}
			if online, _ := s.rdb.HGet(ctx, s.keys.Device(id), fOnline).Result(); online != "1" {
				continue
			}
			if err := s.sendRotation(ctx, id, false, "resend"); err != nil {
				s.log.Warn().Err(err).Str("device", id).Msg("rotate_key resend")
			}
		}
	}
}

// rotationOnBirth sends a pending rotation again after every birth (the
// device may have missed it while offline or lost it in a power cut). The
// uplink path has just read the device's keys, so the key cache knows
// whether a rotation is pending: a birth without one costs no Redis call.
// A rotation started since is sent by StartRotation itself or by the
// resend sweep.
func (s *Service) rotationOnBirth(ctx context.Context, dev string, m envelope.Message) error {
	if !s.rotationPending(dev) {
		return nil
	}
	b, err := topics.ParseBirth(m.Body)
	if err != nil || !b.Online {
		return nil // handleBirth reports the bad body
	}
	s.expireRotation(ctx, dev)
	return s.sendRotation(ctx, dev, true, "birth")
}

// handleKeyAck answers a key_ack. The uplink path has promoted the key
// when the ack was sealed under the pending key, so the rotation is
// confirmed here; an ack of a still pending rotation was sealed under the
// old key and is refused.
func (s *Service) handleKeyAck(ctx context.Context, dev string, m envelope.Message) error {
	ack, err := topics.ParseKeyAck(m.Body)
	if err != nil {
		return &Error{Code: CodeInvalid, Message: "invalid key_ack", Err: err}
	}
	r, err := s.Rotation(ctx, dev)
	if err != nil && ErrorCode(err) != CodeNotFound {
		return err
	}
	switch {
	case err != nil || r.ID != ack.ID:
		return Errorf(CodeInvalid, "id", "key_ack for unknown rotation %q", ack.ID)
	case r.State == RotationPending:
		return Errorf(CodeInvalid, "id", "key_ack for rotation %s sealed under the old key", ack.ID)
	case r.State != RotationConfirmed:
		return Errorf(CodeInvalid, "id", "key_ack for %s rotation %s", r.State, ack.ID)
	}
	s.emitKey(ctx, dev, map[string]any{"state": "acked", "rotation": ack.ID})
	return s.Send(ctx, dev, topics.KindKeyConfirm, map[string]topics.KeyConfirm{"key_confirm": {ID: ack.ID}})
}

// openRotated opens an uplink whose MAC failed under the cached key:
// under the device's current key read afresh (another replica may have
// promoted a rotation), else under its pending key. rid is the pending
// rotation the message was sealed for ("" for the current key).
func (s *Service) openRotated(ctx context.Context, dev string, cached *envelope.Keys, topic string, payload []byte) (m envelope.Message, rid string, ok bool) {
	s.cache.drop(dev) // a re-read: nothing changed here for other replicas to drop
	fresh, err := s.DeviceKeys(ctx, dev)
	if err != nil {
		return m, "", false
	}
	if !fresh.Equal(cached) {
		if m, err = envelope.Open(fresh, topic, payload); err == nil {
			return m, "", true
		}
	}
	next, rid, err := s.PendingKeys(ctx, dev)
	if err != nil || next == nil {
		return m, "", false
	}
	if m, err = envelope.Open(next, topic, payload); err != nil {
		return m, "", false
	}
	return m, rid, true
}

// promote makes rotation rid's key dev's key after a valid message of kind
// under it; false when the rotation is no longer pending.
func (s *Service) promote(ctx context.Context, dev, rid, kind string) (bool, error) {
	n, err := promoteScript.Run(ctx, s.rdb, []string{s.keys.PSK(dev), s.rotationKey(dev)},
		rid, s.now().UnixMilli(), kind).Int()
	if err != nil {
		return false, fmt.Errorf("promote key %s: %w", dev, err)
	}
	s.cache.forget(dev)
	if n == 1 {
		s.log.Info().Str("device", dev).Str("rotation", rid).Str("via", kind).Msg("key rotation confirmed: old key destroyed")
		s.emitKey(ctx, dev, map[string]any{"state": RotationConfirmed, "rotation": rid, "via": kind})
		if err := s.Send(ctx, dev, topics.KindKeyConfirm, map[string]topics.KeyConfirm{"key_confirm": {ID: rid}}); err != nil {
			s.log.Warn().Err(err).Str("device", dev).Msg("key_confirm not sent; the next downlink confirms")
		}
	}
	return n != 0, nil
}

func (s *Service) emitKey(ctx context.Context, dev string, data map[string]any) {
	if err := s.Emit(ctx, dev, topics.EventKey, data); err != nil {
		s.log.Error().Err(err).Str("device", dev).Msg("emit key event")
	}
}

// PendingKeys returns the keys of device id's pending rotation and its ID,
// or nil when none is pending (or its overlap has ended). It reads Redis
// every time: it is asked only when the current key did not verify.
func (a *Accounts) PendingKeys(ctx context.Context, id string) (*envelope.Keys, string, error) {
	if topics.ValidateID(id) != nil {
		return nil, "", nil
	}
	v, err := a.rdb.HMGet(ctx, a.keys.Dev(id, "rotation"), "state", "id", "expires_at", "sealed").Result()
	if err != nil {
		return nil, "", Unavailable("pending key "+id, err)
	}
	state, _ := v[0].(string)
	rid, _ := v[1].(string)
	exp, _ := v[2].(string)
	sealed, _ := v[3].(string)
	ms, _ := strconv.ParseInt(exp, 10, 64)
	if state != RotationPending || sealed == "" || a.now().UnixMilli() >= ms {
		return nil, "", nil
	}
	psk, err := a.vault.Open(id, []byte(sealed))
	if err != nil {
		return nil, "", fmt.Errorf("pending key %s: %w", id, err)
	}
	k, err := envelope.DeriveKeys(psk)
	clear(psk)
	if err != nil {
		return nil, "", fmt.Errorf("pending key %s: %w", id, err)
	}
	return &k, rid, nil
}

// VerifyDevicePassword checks device id's MQTT password against its
// current key and, during a rotation's overlap, its pending key
// (PROTOCOL.md 15.4). The broker calls it when the cached key refuses a
// password as wrong.
func (a *Accounts) VerifyDevicePassword(ctx context.Context, id, password string, now time.Time) error {
	a.cache.drop(id) // a re-read (a wrong password must not reach other replicas)
	k, err := a.DeviceKeys(ctx, id)
	if err != nil {
		return err
	}
	err = envelope.VerifyPassword(k, id, password, now)
	if !errors.Is(err, envelope.ErrPasswordMAC) {
		return err
	}
	next, _, perr := a.PendingKeys(ctx, id)
	if perr != nil || next == nil {
		return err
	}
	return envelope.VerifyPassword(next, id, password, now)
}
