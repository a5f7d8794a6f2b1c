package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// Command is one command as the API shows it.
type Command struct {
	ID             string `json:"id"`
	Device         string `json:"device"`
	Seq            int64  `json:"seq"`
	Action         string `json:"action"`
	TargetRegister string `json:"target_register,omitempty"`
	Value          *int   `json:"value,omitempty"`
	RequestID      string `json:"request_id,omitempty"`
	Operator       string `json:"operator,omitempty"`
	State          string `json:"state"`
	Attempts       int64  `json:"attempts"` // times sent

	CreatedAt   time.Time  `json:"created_at"` // queued
	ExpiresAt   time.Time  `json:"expires_at"`
	SentAt      *time.Time `json:"sent_at,omitempty"` // first send
	LastSentAt  *time.Time `json:"last_sent_at,omitempty"`
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"` // entered its final state

	Result *Result `json:"result,omitempty"`
	// Error says why a command failed, expired or timed out.
	Error string `json:"error,omitempty"`
	// LateResult is a result that arrived after the command had ended
	// otherwise (e.g. expired); kept for the record, the state stays.
	LateResult *Result `json:"late_result,omitempty"`
}

// Result is what the device reported.
type Result struct {
	Status     string     `json:"status"` // topics.ResultSuccess or topics.ResultFailed
	Value      *int       `json:"value,omitempty"`
	Error      string     `json:"error,omitempty"`
	ExecutedAt *time.Time `json:"executed_at,omitempty"`
	DurationMS int64      `json:"duration_ms,omitempty"`
}

// Fields of a command hash.
const (
	fID          = "id"
	fDevice      = "device"
	fSeq         = "seq"
	fAction      = "action"
	fTarget      = "target_register"
	fValue       = "value"
	fRequestID   = "request_id"
	fOperator    = "operator"
	fState       = "state"
	fAttempts    = "attempts"
	fCreatedAt   = "created_at"
	fExpiresAt   = "expires_at"
	fSentAt      = "sent_at"
	fLastSentAt  = "last_sent_at"
	fDeliveredAt = "delivered_at"
	fFinishedAt  = "finished_at"
	fError       = "error"
	fResStatus   = "result_status"
	fResValue    = "result_value"
	fResError    = "result_error"
	fResExecuted = "executed_at"
	fResDuration = "duration_ms"
	fLateStatus  = "late_status"
	fLateValue   = "late_value"
	fLateError   = "late_error"
	fLateAt      = "late_at"
)

// devKeys are one device's command keys.
type devKeys struct {
	dev, active, history, seq string
}

func (s *Service) devKeys(dev string) devKeys {
	return devKeys{
		dev:     s.keys.Device(dev),
		active:  s.keys.Dev(dev, "cmdq"),
		history: s.keys.Dev(dev, "cmds"),
		seq:     s.keys.Dev(dev, "cmdseq"),
	}
}

func (s *Service) cmdKey(dev, cid string) string   { return s.keys.Dev(dev, "cmd:"+cid) }
func (s *Service) reqKey(dev, reqID string) string { return s.keys.Dev(dev, "cmdreq:"+reqID) }
func (s *Service) indexKey(cid string) string      { return s.keys.Global("cmdidx:" + cid) }
func (s *Service) activeDevices() string           { return s.keys.Global("cmdactive") }

// auditLua defines AUDIT, which appends a command event to the device's
// audit stream inside the script that made the change (same Cluster slot),
// so that the change and its record are one atomic write and no separate
// audit round trip is needed. f is the command as it now is; from the
// previous state ("" for a new command); res the result as JSON ("" for
// none); by the operator ("" for none). The data is emit's document
// (eventData), built here from the hash; it returns the entry ID and the
// data, which the caller publishes (Fleet.PublishEvent).
const auditLua = `
local function AUDIT(f, from, res, stream, maxlen, at, by)
  local d = {command_id = f['id'], state = f['state'], action = f['action'], attempts = tonumber(f['attempts']) or 0}
  if from ~= '' then d['from'] = from end
  for _, k in ipairs({'target_register', 'request_id', 'operator', 'error'}) do
    if f[k] and f[k] ~= '' then d[k] = f[k] end
  end
  local v = tonumber(f['value'] or '')
  if v then d['value'] = v end
  local data = cjson.encode(d)
  if res ~= '' then data = string.sub(data, 1, -2) .. ',"result":' .. res .. '}' end
  local x = {'XADD', stream, 'MAXLEN', '~', maxlen, '*', 'kind', '` + topics.EventCommand + `', 'at', at, 'data', data}
  if by ~= '' then x[#x + 1] = 'by'; x[#x + 1] = by end
  return redis.call(unpack(x)), data
end
`

// enqueueScript creates a queued command and appends its event, refusing
// an unknown device and answering a known request_id with its command.
// KEYS: dev hash, cmd hash, active zset, history zset, seq, request key,
// audit stream. ARGV: cid, has request id ("1"/"0"), max history, request
// key ttl ms, audit maxlen, by, field, value, ...
// Returns {0,""} unknown device, {2,cid} existing request, {1,seq,event
// id,event data} queued, {3,""} decommissioned device. A device hash
// always has its id field (provisionScript). The history holds at most
// seq entries (one per INCR), so it is trimmed only once seq passes the
// cap, without counting it first.
var enqueueScript = redis.NewScript(auditLua + `
local d = redis.call('HMGET', KEYS[1], 'id', 'state')
if not d[1] then return {0, ''} end
if d[2] == 'decommissioned' then return {3, ''} end
if ARGV[2] == '1' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {2, prev} end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 7))
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
local cap = tonumber(ARGV[3])
if seq > cap then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -cap - 1) end
if ARGV[2] == '1' then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[4]) end
local f = {}
for i = 7, #ARGV - 1, 2 do f[ARGV[i]] = ARGV[i + 1] end
local id, data = AUDIT(f, '', '', KEYS[7], ARGV[5], f['created_at'], ARGV[6])
return {1, tostring(seq), id, data}
`)

// transitionLua moves a command from one of the states in ARGV[A+1]
// (space-separated) to ARGV[A+2], atomically, and appends the event
// (AUDIT). K and A, set before it, offset its KEYS and ARGV: a checked
// script (checkedTransitionScript) has the replay check's first.
// KEYS: cmd hash, active zset, audit stream. ARGV: from, to, now ms,
// retention ms, audit maxlen, by, result JSON ("" for none), value guard
// ("" for none, else resultGuard's tokens: the command's action|target,
// =value when it must equal it, one of which must match before anything
// is written), number of late fields, late field, value, ... (writeLua),
// field, value, ... (set together with the state).
// Entering "sent" sets sent_at once, last_sent_at and counts attempts;
// "sent" -> "sent" is a resend. Entering succeeded or failed sets
// delivered_at if no receipt came. A final state sets finished_at, leaves
// the active queue and starts the retention clock.
// Returns {1, old state, hash, event id, event data} done, {0, current
// state, hash} refused, {3, current state, hash} guard not met (nothing
// written), {-1, ”} no command; hash is the command as it
// now is (field, value, ...), so that the caller need not read it again.
// It reads the hash once and writes it once: three calls with the event,
// five for a final state.
const transitionLua = readLua + writeLua

// readLua is transitionLua's first part: it reads the command and checks
// the guard. A checked script runs the replay check between it and
// writeLua, so that a guard miss consumes no nonce (the caller decides
// and runs again).
const readLua = `
local h = redis.call('HGETALL', KEYS[K + 1])
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
local cur = f['state']
local function flat()
  local out = {}
  for k, v in pairs(f) do out[#out + 1] = k; out[#out + 1] = v end
  return out
end
local g = ARGV[A + 8]
if cur and g ~= '' then
  local tok, pass = (f['action'] or '') .. '|' .. (f['target_register'] or ''), false
  for t in string.gmatch(g, '%S+') do
    local name, eq = string.match(t, '^([^=]*)=?(.*)$')
    if name == tok and (eq == '' or eq == f['value']) then pass = true end
  end
  if not pass then return {3, cur, h} end
end
`

// writeLua is transitionLua's second part: the state check and the
// writes. A command already past the from states gets the late fields
// (ARGV[A+10] on, ARGV[A+9] of them, late_status first) unless it ended
// in to or with the same result status: {5, state, hash}.
const writeLua = `
if not cur then return {-1, ''} end
local ok = false
for st in string.gmatch(ARGV[A + 1], '%S+') do
  if st == cur then ok = true end
end
local nl = tonumber(ARGV[A + 9])
if not ok then
  if nl > 0 and cur ~= ARGV[A + 2] and (f['result_status'] or '') ~= ARGV[A + 11] then
    local late = {unpack(ARGV, A + 10, A + 9 + nl)}
    redis.call('HSET', KEYS[K + 1], unpack(late))
    for i = 1, #late, 2 do f[late[i]] = late[i + 1] end
    return {5, cur, flat()}
  end
  return {0, cur, h}
end
local to, now = ARGV[A + 2], ARGV[A + 3]
local set = {'state', to}
for i = A + 10 + nl, #ARGV do set[#set + 1] = ARGV[i] end
if DUE then -- the sender's script decides what is due (deliverScript)
  local extra
  to, extra = DUE(f, cur, tonumber(now))
  if not to then return {0, cur, h} end
  if to == 'resend' then
    f['last_sent_at'], f['attempts'] = now, tostring((tonumber(f['attempts']) or 0) + 1)
    redis.call('HSET', KEYS[K + 1], 'last_sent_at', now, 'attempts', f['attempts'])
    return {4, cur, flat()}
  end
  set = {'state', to}
  for _, v in ipairs(extra) do set[#set + 1] = v end
end
local function put(k, v) set[#set + 1] = k; set[#set + 1] = v end
if to == 'sent' then
  if not f['sent_at'] then put('sent_at', now) end
  put('last_sent_at', now)
  put('attempts', tostring((tonumber(f['attempts']) or 0) + 1))
elseif (to == 'delivered' or to == 'succeeded' or to == 'failed') and not f['delivered_at'] then
  put('delivered_at', now)
end
local final = to == 'succeeded' or to == 'failed' or to == 'expired' or to == 'timed_out' or to == 'cancelled'
if final then put('finished_at', now) end
redis.call('HSET', KEYS[K + 1], unpack(set))
for i = 1, #set, 2 do f[set[i]] = set[i + 1] end
if final then
  redis.call('ZREM', KEYS[K + 2], f['id'])
  redis.call('PEXPIRE', KEYS[K + 1], ARGV[A + 4])
end
local id, data = AUDIT(f, cur, ARGV[A + 7], KEYS[K + 3], ARGV[A + 5], now, ARGV[A + 6])
return {1, cur, flat(), id, data}
`

var transitionScript = redis.NewScript(auditLua + "local K, A, DUE = 0, 0, nil\n" + transitionLua)

// deliverScript is transitionScript for the sender: DUE decides from the
// command as it is what is due, so that the sender need not read it
// first. A queued or sent command past its expiry expires (with ARGV[4]
// as the error); a queued one, or a sent one with ARGV[1] "1" (resend
// everything) or no send within ARGV[2] ms, is sent; a delivered one with
// ARGV[1] "1" or no send or receipt within ARGV[3] ms is sent again
// ("resend": last_sent_at and attempts only, no event, returns {4,
// state, hash}); anything else is not due ({0, state, hash}). ARGV from
// 5 on are transitionScript's, with from "queued sent delivered".
var deliverScript = redis.NewScript(auditLua + "local K, A = 0, 4\n" + `
local function DUE(f, cur, now)
  if cur == 'queued' or cur == 'sent' then
    local exp = tonumber(f['expires_at'] or '') or 0
    if exp > 0 and now >= exp then return 'expired', {'error', ARGV[4]} end
    if cur == 'queued' then return 'sent', {} end
    local last = tonumber(f['last_sent_at'] or '')
    if ARGV[1] == '1' or not last or now - last >= tonumber(ARGV[2]) then return 'sent', {} end
    return nil
  end
  if ARGV[1] == '1' then return 'resend' end
  local last, ls = tonumber(f['delivered_at'] or ''), tonumber(f['last_sent_at'] or '')
  if ls and (not last or ls > last) then last = ls end
  if last and now - last >= tonumber(ARGV[3]) then return 'resend' end
  return nil
end
` + transitionLua)

// checkedTransitionScript is transitionScript after the uplink's replay
// check (backend.ReplayLua), for a device's command_result: one round trip
// checks the nonce and records the result. KEYS: Fleet.NonceKeys, then
// transitionScript's; ARGV: Fleet.NonceArgs, then transitionScript's. A
// refused nonce returns {2, code, high water mark} and changes nothing; a
// guard miss returns before the replay check, so it consumes no nonce.
var checkedTransitionScript = redis.NewScript(auditLua +
	"local function REFUSE(c, h) return {2, c, h} end\nlocal K, A, DUE = 3, 3, nil\n" +
	readLua + backend.ReplayLua + writeLua)

// transition moves command cid of dev from one of from to to, with extra
// fields, and on success counts it and publishes the event its script
// appended. It returns the command as the script left it (one round trip:
// the script returns the hash) and the previous state; ok is false when
// the command was in another state (then c is the command unchanged, in
// that state).
func (s *Service) transition(ctx context.Context, dev, cid string, from []string, to string, extra map[string]any) (c Command, prev string, ok bool, err error) {
	c, prev, code, err := s.runTransition(ctx, dev, cid, from, to, extra, "", nil, nil)
	return c, prev, code == 1, err
}

// prefix is what a script runs before the transition: the uplink's replay
// check (checkedTransitionScript, with the nonce) or the sender's
// decision (deliverScript), with its own KEYS and ARGV first.
type prefix struct {
	script *redis.Script
	keys   []string
	args   []any
	nonce  uint64
}

// runTransition is transition in pre's script when pre is set (a refused
// nonce is backend.NonceRefused's error, and nothing changed), and only
// when the command meets guard (resultGuard; errGuard, with c the command
// unchanged, when it does not). code is the script's: 1 done, 0 refused
// or not due, 4 a delivered command's resend recorded (deliverScript).
func (s *Service) runTransition(ctx context.Context, dev, cid string, from []string, to string, extra map[string]any, guard string, late []any, pre *prefix) (c Command, prev string, code int64, err error) {
	now := s.now()
	by := backend.OperatorFrom(ctx)
	res, err := resultJSON(extra)
	if err != nil {
		return Command{}, "", 0, fmt.Errorf("command %s -> %s: %w", cid, to, err)
	}
	keys := []string{s.cmdKey(dev, cid), s.devKeys(dev).active, s.keys.Audit(dev)}
	args := []any{strings.Join(from, " "), to, now.UnixMilli(), s.cfg.Retention.Milliseconds(), s.fleet.AuditMaxLen(), by, res, guard, len(late)}
	args = append(args, late...)
	for k, v := range extra {
		args = append(args, k, v)
	}
	script := transitionScript
	if pre != nil {
		script, keys, args = pre.script, append(pre.keys, keys...), append(pre.args, args...)
	}
	reply, err := script.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return Command{}, "", 0, backend.Unavailable("command "+cid+" -> "+to, err)
	}
	code, _ = reply[0].(int64)
	if code == 2 && pre != nil && pre.script == checkedTransitionScript && len(reply) >= 3 {
		rc, _ := reply[1].(int64)
		high, _ := reply[2].(string)
		return Command{}, "", 0, &nonceRefused{backend.NonceRefused(dev, pre.nonce, rc, high)}
	}
	cur, _ := reply[1].(string)
	if code == -1 || len(reply) < 3 {
		return Command{}, "", 0, backend.Errorf(backend.CodeNotFound, "id", "no command %q", cid)
	}
	c = parse(flatHash(reply[2]))
	switch code {
	case 3:
		return c, cur, 0, errGuard
	case 1:
	default:
		return c, cur, code, nil
	}
	s.m.total.WithLabelValues(c.State).Inc()
	if Final(c.State) {
		s.m.latency.Observe(now.Sub(c.CreatedAt).Seconds())
	}
	if len(reply) >= 5 {
		id, _ := reply[3].(string)
		data, _ := reply[4].(string)
		s.publish(ctx, backend.Event{ID: id, Device: dev, Kind: topics.EventCommand, At: now.UTC(), By: by, Data: json.RawMessage(data)}, cid)
	}
	return c, cur, 1, nil
}

// nonceRefused is a refused nonce of a checked transition, kept apart
// from the transition's own errors (a device unknown to the replay check
// is not an unknown command).
type nonceRefused struct{ err error }

func (e *nonceRefused) Error() string { return e.err.Error() }
func (e *nonceRefused) Unwrap() error { return e.err }

// errGuard: the command did not meet the transition's guard.
var errGuard = errors.New("command does not meet the guard")

// publish publishes a command event its script has appended to the audit
// stream; a failure is logged (the audit stream holds the event).
func (s *Service) publish(ctx context.Context, ev backend.Event, cid string) {
	if err := s.fleet.PublishEvent(ctx, ev); err != nil {
		s.log.Error().Err(err).Str("device", ev.Device).Str("command", cid).Msg("publish command event")
	}
}

// resultJSON is the result a transition's extra fields record, as the
// event carries it (Command.Result of the hash), or "" for none.
func resultJSON(extra map[string]any) (string, error) {
	if _, ok := extra[fResStatus]; !ok {
		return "", nil
	}
	h := make(map[string]string, len(extra))
	for k, v := range extra {
		h[k] = fmt.Sprint(v)
	}
	b, err := json.Marshal(parse(h).Result)
	return string(b), err
}

// flatHash turns a script's HGETALL reply (field, value, ...) into a map.
func flatHash(v any) map[string]string {
	xs, _ := v.([]any)
	h := make(map[string]string, len(xs)/2)
	for i := 0; i+1 < len(xs); i += 2 {
		k, _ := xs[i].(string)
		v, _ := xs[i+1].(string)
		h[k] = v
	}
	return h
}

// emit publishes c's state as an event on ecowatt/v1/events/{dev}/command
// and appends it to the device's audit stream, for a change whose script
// did not append it (a late result).
func (s *Service) emit(ctx context.Context, c Command, from string) {
	if err := s.fleet.Emit(ctx, c.Device, topics.EventCommand, eventData(c, from)); err != nil {
		s.log.Error().Err(err).Str("device", c.Device).Str("command", c.ID).Msg("emit command event")
	}
}

// eventData is the document of c's event after a change from state from
// ("" for a new command); AUDIT (auditLua) builds the same in the scripts.
func eventData(c Command, from string) map[string]any {
	data := map[string]any{
		"command_id": c.ID,
		"state":      c.State,
		"action":     c.Action,
		"attempts":   c.Attempts,
	}
	if from != "" {
		data["from"] = from
	}
	if c.TargetRegister != "" {
		data["target_register"] = c.TargetRegister
	}
	if c.Value != nil {
		data["value"] = *c.Value
	}
	if c.RequestID != "" {
		data["request_id"] = c.RequestID
	}
	if c.Operator != "" {
		data["operator"] = c.Operator
	}
	if c.Result != nil {
		data["result"] = c.Result
	}
	if c.Error != "" {
		data["error"] = c.Error
	}
	return data
}

// load reads one command of dev. A missing one is CodeNotFound.
func (s *Service) load(ctx context.Context, dev, cid string) (Command, error) {
	h, err := s.rdb.HGetAll(ctx, s.cmdKey(dev, cid)).Result()
	if err != nil {
		return Command{}, backend.Unavailable("get command "+cid, err)
	}
	if len(h) == 0 {
		return Command{}, backend.Errorf(backend.CodeNotFound, "id", "no command %q", cid)
	}
	return parse(h), nil
}

// loadMany reads commands of dev in one round trip, skipping missing ones
// (expired by retention); gone lists those.
func (s *Service) loadMany(ctx context.Context, dev string, cids []string) (cmds []Command, gone []string, err error) {
	if len(cids) == 0 {
		return nil, nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmdsOut := make([]*redis.MapStringStringCmd, len(cids))
	for i, cid := range cids {
		cmdsOut[i] = pipe.HGetAll(ctx, s.cmdKey(dev, cid))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, backend.Unavailable("get commands of "+dev, err)
	}
	for i, c := range cmdsOut {
		h := c.Val()
		if len(h) == 0 {
			gone = append(gone, cids[i])
			continue
		}
		cmds = append(cmds, parse(h))
	}
	return cmds, gone, nil
}

func parse(h map[string]string) Command {
	c := Command{
		ID:             h[fID],
		Device:         h[fDevice],
		Seq:            atoi(h[fSeq]),
		Action:         h[fAction],
		TargetRegister: h[fTarget],
		Value:          intPtr(h[fValue]),
		RequestID:      h[fRequestID],
		Operator:       h[fOperator],
		State:          h[fState],
		Attempts:       atoi(h[fAttempts]),
		Error:          h[fError],
		SentAt:         msTime(h[fSentAt]),
		LastSentAt:     msTime(h[fLastSentAt]),
		DeliveredAt:    msTime(h[fDeliveredAt]),
		FinishedAt:     msTime(h[fFinishedAt]),
	}
	if t := msTime(h[fCreatedAt]); t != nil {
		c.CreatedAt = *t
	}
	if t := msTime(h[fExpiresAt]); t != nil {
		c.ExpiresAt = *t
	}
	if st := h[fResStatus]; st != "" {
		c.Result = &Result{Status: st, Value: intPtr(h[fResValue]), Error: h[fResError],
			ExecutedAt: msTime(h[fResExecuted]), DurationMS: atoi(h[fResDuration])}
	}
	if st := h[fLateStatus]; st != "" {
		c.LateResult = &Result{Status: st, Value: intPtr(h[fLateValue]), Error: h[fLateError], ExecutedAt: msTime(h[fLateAt])}
	}
	return c
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func intPtr(s string) *int {
	if s == "" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return nil
	}
	return &n
}

func msTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return nil
	}
	t := time.UnixMilli(ms).UTC()
	return &t
}
