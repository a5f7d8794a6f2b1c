package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
)

// Reasons for security rejections of device messages: values of the
// reason label of ecowatt_security_rejections_total and of security events.
// The broker's own reasons (BrokerRejection) are in brokerReasons.
const (
	ReasonUnknownDevice = "unknown_device"
	ReasonMalformed     = "malformed"
	ReasonBadMAC        = "bad_mac"
	ReasonDecrypt       = "decrypt_failed"
	ReasonReplay        = "replay"
	ReasonStale         = "stale_nonce"
	ReasonBadTopic      = "bad_topic"
	ReasonTopicMismatch = "topic_mismatch"
	ReasonOversized     = "oversized"
	ReasonInvalidBody   = "invalid_body"
	ReasonNonceJump     = "nonce_jump"
)

var allReasons = []string{
	ReasonUnknownDevice, ReasonMalformed, ReasonBadMAC, ReasonDecrypt, ReasonReplay,
	ReasonStale, ReasonBadTopic, ReasonTopicMismatch, ReasonOversized, ReasonInvalidBody, ReasonNonceJump,
}

// MaxOpsSize bounds an operator message.
const MaxOpsSize = 64 << 10

// UplinkHandler processes an authenticated, replay-checked device message.
// An error that is an *Error with CodeInvalid counts as a bad body from the
// device (a security event); other errors are logged.
type UplinkHandler func(ctx context.Context, dev string, m envelope.Message) error

// OpsHandler processes a plain JSON message an operator published to
// ecowatt/v1/ops/{dev}/{kind}. operator is the publishing account, already
// checked to be an admin. When it returns an error, the Service emits a
// "rejected" event of the same kind carrying the error's client-safe
// message (and the body's request_id, when it has one).
type OpsHandler func(ctx context.Context, dev, operator string, body []byte) error

// Handle adds h for uplink kind (topics.Kind*). Several handlers of one kind
// run in the order they were added; the built-in presence handler of
// KindBirth runs first.
func (s *Service) Handle(kind string, h UplinkHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uplink[kind] = append(s.uplink[kind], h)
}

// HandleChecked adds h as the first handler of uplink kind, and leaves
// the replay check of kind's messages to it: h runs ReplayLua inside its
// own script, so that the check and the write are one round trip, and
// returns the error of NonceRefused (or AcceptNonce) when the nonce is
// refused. Such an error is the message's security event and stops it;
// the other handlers of kind do not run.
func (s *Service) HandleChecked(kind string, h UplinkHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checked == nil {
		s.checked = map[string]bool{}
	}
	s.checked[kind] = true
	s.uplink[kind] = append([]UplinkHandler{h}, s.uplink[kind]...)
}

// HandleOps sets the handler of operator kind (topics.KindConfig or
// topics.KindCommand).
func (s *Service) HandleOps(kind string, h OpsHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops[kind] = h
}

// processUplink authenticates, replay-checks and dispatches one device
// message. It reports true when j failed on the store and is to be tried
// again; j then records how far it got (retry.go).
func (s *Service) processUplink(ctx context.Context, t topics.Topic, j *job) (retry bool) {
	dev, topic := t.Device, j.msg.Topic
	if j.opened {
		return s.dispatch(ctx, dev, t.Kind, j)
	}
	if j.msg.Username != "" && j.msg.Username != dev {
		s.SecurityEvent(ctx, dev, ReasonTopicMismatch, fmt.Sprintf("client %q published on %s", j.msg.Username, topic))
		return false
	}
	if j.size > envelope.MaxSize {
		s.SecurityEvent(ctx, dev, ReasonOversized, fmt.Sprintf("%d bytes on %s, limit %d", j.size, topic, envelope.MaxSize))
		return false
	}
	if t.Kind == topics.KindBirth && isWill(j.msg.Payload) {
		s.handleWill(ctx, dev)
		return false
	}
	keys, err := s.DeviceKeys(ctx, dev)
	if errors.Is(err, ErrNotFound) {
		s.SecurityEvent(ctx, dev, ReasonUnknownDevice, "message on "+topic)
		return false
	}
	if err != nil {
		return s.storeFailed(j, err, "key lookup failed")
	}
	m, err := envelope.Open(keys, topic, j.msg.Payload)
	rotation := "" // the pending rotation whose key opened m (rotation.go)
	if errors.Is(err, envelope.ErrMAC) {
		if m2, rid, ok := s.openRotated(ctx, dev, keys, topic, j.msg.Payload); ok {
			m, rotation, err = m2, rid, nil
		}
	}
	if err != nil {
		reason := ReasonMalformed
		switch {
		case errors.Is(err, envelope.ErrMAC):
			reason = ReasonBadMAC
		case errors.Is(err, envelope.ErrDecrypt):
			reason = ReasonDecrypt
		case errors.Is(err, envelope.ErrTooLarge):
			reason = ReasonOversized
		}
		s.SecurityEvent(ctx, dev, reason, err.Error()+" on "+topic)
		return false
	}
	if rotation != "" {
		// Promote before the nonce check: a store error can then be
		// retried (the nonce is not spent yet), and a message that opens
		// under the pending key proves the device holds it, replayed or not.
		ok, err := s.promote(ctx, dev, rotation, t.Kind)
		if err != nil {
			return s.storeFailed(j, err, "key promotion failed")
		}
		if !ok {
			s.SecurityEvent(ctx, dev, ReasonBadMAC, "key rotation "+rotation+" is no longer pending; message on "+topic)
			return false
		}
	}
	s.mu.RLock()
	checked := s.checked[t.Kind]
	s.mu.RUnlock()
	if !checked {
		if err := s.acceptNonce(ctx, dev, m.Nonce); err != nil {
			if s.nonceRefusal(ctx, dev, topic, err) {
				return false
			}
			return s.storeFailed(j, err, "replay check failed")
		}
		s.m.uplink.WithLabelValues(t.Kind).Inc()
	}
	if rotation == "" && t.Kind != topics.KindBirth && s.rotationPending(dev) {
		// The device still uses its old key: send rotate_key again when
		// the last one is older than KeyResend (lost, or a power cut).
		if err := s.sendRotation(ctx, dev, false, "resend"); err != nil {
			s.log.Warn().Err(err).Str("device", dev).Msg("rotate_key resend")
		}
	}
	j.opened, j.env, j.next = true, m, 0
	return s.dispatch(ctx, dev, t.Kind, j)
}

// nonceRefusal records err, when it refuses an uplink's nonce, as the
// message's security event, and reports whether it did.
func (s *Service) nonceRefusal(ctx context.Context, dev, topic string, err error) bool {
	var reason string
	switch {
	case errors.Is(err, envelope.ErrReplay):
		reason = ReasonReplay
	case errors.Is(err, envelope.ErrStale):
		reason = ReasonStale
	case errors.Is(err, ErrNonceJump):
		reason = ReasonNonceJump
	case errors.Is(err, ErrNotFound):
		s.SecurityEvent(ctx, dev, ReasonUnknownDevice, "device removed; message on "+topic)
		return true
	default:
		return false
	}
	s.SecurityEvent(ctx, dev, reason, err.Error()+" on "+topic)
	return true
}

// storeFailed decides the fate of j after a store error: a retry when
// the error is transient, a counted drop otherwise.
func (s *Service) storeFailed(j *job, err error, what string) (retry bool) {
	j.lastErr = err
	if transient(err) {
		if j.since.IsZero() {
			s.log.Warn().Err(err).Str("device", deviceOf(j.msg.Topic)).Str("kind", kindOf(j.msg.Topic)).
				Msg("uplink held for retry: " + what)
		}
		return true
	}
	s.dropUplink(*j, DropError, err)
	return false
}

// dispatch runs the handlers of kind on j's opened message, from j.next,
// every one even when another fails: a bad body in one service's handler
// must not hide the message from the others. Bad bodies (CodeInvalid) are
// one security event; a transient store failure stops here so that the
// retry resumes at that handler (retry.go); any other failure is counted
// and logged, and the next handler runs.
func (s *Service) dispatch(ctx context.Context, dev, kind string, j *job) (retry bool) {
	s.mu.RLock()
	hs := s.uplink[kind]
	s.mu.RUnlock()
	if len(hs) == 0 {
		s.log.Debug().Str("device", dev).Str("kind", kind).Msg("no handler for uplink kind")
		return false
	}
	start := time.Now()
	defer func() { s.m.handlerLatency.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()
	var invalid, failed []error
	defer func() {
		if len(invalid) > 0 {
			s.SecurityEvent(ctx, dev, ReasonInvalidBody, kind+": "+errors.Join(invalid...).Error())
		}
		if len(failed) > 0 {
			s.m.handlerErrors.WithLabelValues(kind).Add(float64(len(failed)))
			s.log.Error().Err(errors.Join(failed...)).Str("device", dev).Str("kind", kind).Msg("uplink handler failed")
		}
	}()
	s.mu.RLock()
	checked := s.checked[kind]
	s.mu.RUnlock()
	for ; j.next < len(hs); j.next++ {
		err := hs[j.next](ctx, dev, j.env)
		if checked && j.next == 0 {
			if err != nil && s.nonceRefusal(ctx, dev, j.msg.Topic, err) {
				return false
			}
			if err == nil || !transient(err) {
				s.m.uplink.WithLabelValues(kind).Inc()
			}
		}
		switch {
		case err == nil:
		case ErrorCode(err) == CodeInvalid:
			invalid = append(invalid, err)
		case transient(err):
			s.m.handlerErrors.WithLabelValues(kind).Inc()
			return s.storeFailed(j, err, "handler failed")
		default:
			failed = append(failed, err)
		}
	}
	return false
}

func (s *Service) processOps(ctx context.Context, t topics.Topic, j job) {
	dev, op := t.Device, j.msg.Username
	var err error
	s.mu.RLock()
	h := s.ops[t.Kind]
	s.mu.RUnlock()
	switch {
	case j.size > MaxOpsSize:
		err = Errorf(CodeTooLarge, "", "operator message is %d bytes, limit %d", j.size, MaxOpsSize)
	case h == nil:
		err = Errorf(CodeInvalid, "", "operator %s messages are not supported yet", t.Kind)
	default:
		// The broker lets only operators and admins publish on ops
		// topics; the role is checked again here, once for every kind,
		// because an external broker's ACL is not ours.
		if err = s.checkOps(ctx, op, t.Kind); err == nil {
			err = h(WithOperator(ctx, op), dev, op, j.msg.Payload)
		}
	}
	if err == nil {
		return
	}
	s.log.Info().Err(err).Str("device", dev).Str("operator", op).Str("kind", t.Kind).Msg("operator message rejected")
	if eerr := s.Emit(WithOperator(ctx, op), dev, t.Kind, rejection(op, err, j.msg.Payload)); eerr != nil {
		s.log.Error().Err(eerr).Str("device", dev).Msg("emit operator rejection")
	}
}

// MaxNonceJump bounds how far an uplink nonce may lie above the device's
// high-water mark (PROTOCOL.md, "Nonce jump bound"). A device skips at
// most one reservation block per boot (devicesim: 64 nonces), so 2^32 is
// millions of reboots without one accepted message; a larger jump is a
// window-poisoning attempt by a holder of the key (one nonce 2^53-1 would
// make every later genuine nonce stale) and is refused as ErrNonceJump.
const MaxNonceJump = 1 << 32

// ErrNonceJump refuses an uplink nonce more than MaxNonceJump above the
// high-water mark.
var ErrNonceJump = errors.New("nonce jumps too far ahead")

// checkOps allows only a known operator or admin to send ops messages.
func (s *Service) checkOps(ctx context.Context, operator, kind string) error {
	if operator == "" {
		return Errorf(CodeForbidden, "", "anonymous operator messages are not accepted")
	}
	role, err := s.OperatorRole(ctx, operator)
	if err != nil && ErrorCode(err) != CodeNotFound {
		return err
	}
	if !role.AtLeast(topics.RoleOperator) {
		return Errorf(CodeForbidden, "", "operator %q (role %q) may not send %s messages; the role %q or %q may", operator, role, kind, topics.RoleOperator, topics.RoleAdmin)
	}
	return nil
}

// rejection is the event document of a refused operator message: status
// "rejected", the operator, the client-safe error and, when the body has
// a readable one, its request_id, so that a script can match its request.
func rejection(operator string, err error, body []byte) map[string]any {
	msg, field := ErrorMessage(err)
	data := map[string]any{
		"status":   "rejected",
		"operator": operator,
		"error":    map[string]string{"code": ErrorCode(err), "message": msg, "field": field},
	}
	var loose struct {
		RequestID any `json:"request_id"`
	}
	if json.Unmarshal(body, &loose) == nil {
		if id, ok := loose.RequestID.(string); ok && id != "" && len(id) <= topics.MaxRequestIDLen {
			data["request_id"] = id
		}
	}
	return data
}

// replayScript is envelope.Window in Redis, plus last_seen on acceptance.
// The window is kept as the highest accepted nonce (KEYS[1]) and a 64-bit
// ring (KEYS[2]) where bit n%64 is set when nonce n, within 64 of the
// high-water mark, was accepted. That is Window's state with the bits
// indexed by n%64 instead of high-n, so no 64-bit integers are needed in
// Lua: nonces stay below 2^53 and are exact in Lua numbers.
//
// KEYS: rxhigh, rxbits, dev hash. ARGV: nonce, now (unix ms), max jump.
// Returns 1 accepted, 0 unknown device, -1 replay, -2 stale, -3 jump
// above the bound (nothing written); and the high water mark before the
// call.
var replayScript = redis.NewScript("local function REFUSE(c, h) return {c, h} end\n" + ReplayLua + "return {1, hs}\n")

// ReplayLua is replayScript's check as a Lua chunk, for the script of a
// HandleChecked handler: it reads KEYS[1..3] and ARGV[1..3] (NonceKeys,
// NonceArgs), runs "return REFUSE(code, high)" on refusal (the embedding
// script defines REFUSE before it; codes as replayScript's) and on
// acceptance falls through with last_seen written.
const ReplayLua = `
if redis.call('EXISTS', KEYS[3]) == 0 then return REFUSE(0, '0') end
local n = tonumber(ARGV[1])
local w = redis.call('MGET', KEYS[1], KEYS[2])
local hs = w[1] or '0'
local high = tonumber(hs)
if n < 1 then return REFUSE(-2, hs) end
if n - high > tonumber(ARGV[3]) then return REFUSE(-3, hs) end
-- The ring is edited here, byte by byte, and written back whole: one
-- call however many bits change (no bit library: miniredis has none).
local r = w[2] or ''
local b = {string.byte(r .. string.rep('\0', 8 - #r), 1, 8)}
local function bit(k) local m = 2 ^ (7 - k % 8); return math.floor(b[math.floor(k / 8) + 1] / m) % 2, m end
local function put(k, v)
  local cur, m = bit(k)
  local i = math.floor(k / 8) + 1
  b[i] = b[i] + (v - cur) * m
end
if n > high then
  if n - high >= 64 then
    b = {0, 0, 0, 0, 0, 0, 0, 0}
  else
    for i = high + 1, n - 1 do put(i % 64, 0) end
  end
  put(n % 64, 1)
  redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], string.char(unpack(b)))
else
  if high - n >= 64 then return REFUSE(-2, hs) end
  if bit(n % 64) == 1 then return REFUSE(-1, hs) end
  put(n % 64, 1)
  redis.call('SET', KEYS[2], string.char(unpack(b)))
end
redis.call('HSET', KEYS[3], 'last_seen', ARGV[2])
`

// NonceKeys are ReplayLua's KEYS for dev, in dev's Cluster slot.
func (s *Service) NonceKeys(dev string) []string {
	return []string{s.keys.RxHigh(dev), s.keys.RxBits(dev), s.keys.Device(dev)}
}

// NonceArgs are ReplayLua's ARGV for uplink nonce n. A nonce above 2^53-1
// is refused here, as stale.
func (s *Service) NonceArgs(n uint64) ([]any, error) {
	if n > envelope.MaxNonce {
		return nil, fmt.Errorf("%w: nonce %d above 2^53-1", envelope.ErrStale, n)
	}
	return []any{strconv.FormatUint(n, 10), s.now().UnixMilli(), MaxNonceJump}, nil
}

// NonceRefused is the error of a nonce n of dev that ReplayLua refused
// with code, the high-water mark being high.
func NonceRefused(dev string, n uint64, code int64, high string) error {
	switch code {
	case 0:
		return Errorf(CodeNotFound, "id", "no device %q", dev)
	case -1:
		return fmt.Errorf("%w: %d", envelope.ErrReplay, n)
	case -3:
		return fmt.Errorf("%w: %d is more than 2^32 above %s", ErrNonceJump, n, high)
	default:
		return fmt.Errorf("%w: %d <= %s-%d", envelope.ErrStale, n, high, envelope.WindowSize)
	}
}

// AcceptNonce is the replay check on its own, for a HandleChecked handler
// that refuses a message before its script runs.
func (s *Service) AcceptNonce(ctx context.Context, dev string, n uint64) error {
	return s.acceptNonce(ctx, dev, n)
}

// acceptNonce records nonce n for dev's uplink atomically, with the same
// result as envelope.Window.Accept, and updates last_seen.
func (s *Service) acceptNonce(ctx context.Context, dev string, n uint64) error {
	args, err := s.NonceArgs(n)
	if err != nil {
		return err
	}
	res, err := replayScript.Run(ctx, s.rdb, s.NonceKeys(dev), args...).Slice()
	if err != nil {
		return fmt.Errorf("replay check %s: %w", dev, err)
	}
	code, _ := res[0].(int64)
	high, _ := res[1].(string)
	if code == 1 {
		return nil
	}
	return NonceRefused(dev, n, code, high)
}

// isWill reports whether payload is a device's plain will: exactly
// {"online":false}, unsigned.
func isWill(payload []byte) bool {
	var w struct {
		Online *bool `json:"online"`
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if dec.Decode(&w) != nil || dec.More() {
		return false
	}
	return w.Online != nil && !*w.Online
}

// hsetIfExists sets fields of an existing hash; it never creates one.
// KEYS: hash. ARGV: field, value, ...
var hsetIfExists = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
`)

// birthScript records a birth in an existing device hash and appends its
// presence event to the audit stream, in one round trip (the event is
// published after, publishEvent). When ARGV[1] is "1" (connections are
// reported, see presence.go) it refuses a birth whose connection has
// ended. A device hash always has its id field (provisionScript).
// KEYS: dev hash, audit stream. ARGV: tracked, audit maxlen, at (unix
// ms), event data, field, value, ... Returns {1, event id} recorded,
// {0} unknown device, {-1} connection ended.
var birthScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'id', 'conn_gen', 'conn_down')
if not h[1] then return {0} end
if ARGV[1] == '1' and tonumber(h[3] or '0') >= tonumber(h[2] or '0') then return {-1} end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
return {1, redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'presence', 'at', ARGV[3], 'data', ARGV[4])}
`)

// handleBirth records presence from an authenticated birth message.
func (s *Service) handleBirth(ctx context.Context, dev string, m envelope.Message) error {
	b, err := topics.ParseBirth(m.Body) // strict: PROTOCOL.md section 9.1
	if err != nil {
		return &Error{Code: CodeInvalid, Message: "invalid birth", Err: err}
	}
	if !b.Online {
		return s.setOffline(ctx, dev, "birth")
	}
	now := s.now().UTC()
	ms := now.UnixMilli()
	tracked := "0"
	if s.tracked.Load() {
		tracked = "1"
	}
	data, err := json.Marshal(map[string]any{
		"online": true, "firmware_version": b.FirmwareVersion, "config_version": b.ConfigVersion,
		"boot_count": b.BootCount, "uptime_s": b.UptimeSeconds, "slot": b.Slot,
	})
	if err != nil {
		return fmt.Errorf("birth %s: %w", dev, err)
	}
	res, err := birthScript.Run(ctx, s.rdb, []string{s.keys.Device(dev), s.keys.Audit(dev)}, tracked,
		s.cfg.AuditMaxLen, ms, data,
		fOnline, "1", fLastSeen, ms, fBirthAt, ms,
		fFirmwareVersion, b.FirmwareVersion, fConfigVersion, b.ConfigVersion,
		fBootCount, b.BootCount, fUptime, b.UptimeSeconds, fSlot, b.Slot).Slice()
	if err != nil {
		return fmt.Errorf("birth %s: %w", dev, err)
	}
	code, _ := res[0].(int64)
	if code == -1 {
		s.log.Info().Str("device", dev).Msg("birth from a connection that has ended: presence unchanged")
		return nil
	}
	if code != 1 || len(res) < 2 {
		return nil
	}
	id, _ := res[1].(string)
	if err := s.rdb.ZAdd(ctx, s.keys.Online(), redis.Z{Score: float64(ms), Member: dev}).Err(); err != nil {
		return fmt.Errorf("birth %s: online index: %w", dev, err)
	}
	s.log.Info().Str("device", dev).Str("firmware", b.FirmwareVersion).Int64("boot_count", b.BootCount).Msg("device online")
	return s.publishEvent(ctx, Event{ID: id, Device: dev, Kind: topics.EventPresence, At: now, Data: data})
}

// handleWill marks dev offline on its unsigned will, unless the broker
// reports connections (presence.go). The will only hints: it can mark a
// device offline, nothing else.
func (s *Service) handleWill(ctx context.Context, dev string) {
	s.m.uplink.WithLabelValues("will").Inc()
	if s.tracked.Load() {
		// The broker's disconnect report, ordered by generation, already
		// covers this connection; a will delivered late (after a takeover)
		// must not mark the newer connection offline.
		s.log.Debug().Str("device", dev).Msg("will ignored: the broker reports disconnects")
		return
	}
	if err := s.setOffline(ctx, dev, "will"); err != nil {
		s.log.Error().Err(err).Str("device", dev).Msg("will: mark offline")
	}
}

func (s *Service) setOffline(ctx context.Context, dev, why string) error {
	ok, err := hsetIfExists.Run(ctx, s.rdb, []string{s.keys.Device(dev)},
		fOnline, "0", fOfflineAt, s.now().UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("offline %s: %w", dev, err)
	}
	if ok == 0 {
		return nil
	}
	if err := s.rdb.ZRem(ctx, s.keys.Online(), dev).Err(); err != nil {
		return fmt.Errorf("offline %s: online index: %w", dev, err)
	}
	s.log.Info().Str("device", dev).Str("via", why).Msg("device offline")
	return s.Emit(ctx, dev, topics.EventPresence, map[string]any{"online": false, "via": why})
}
