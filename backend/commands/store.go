package commands

import (
	"context"
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

// enqueueScript creates a queued command, refusing an unknown device and
// answering a known request_id with its command.
// KEYS: dev hash, cmd hash, active zset, history zset, seq, request key.
// ARGV: cid, has request id ("1"/"0"), max history, request key ttl ms,
// field, value, ...
// Returns {0,""} unknown device, {2,cid} existing request, {1,seq} queued,
// {3,""} decommissioned device.
var enqueueScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
if redis.call('HGET', KEYS[1], 'state') == 'decommissioned' then return {3, ''} end
if ARGV[2] == '1' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {2, prev} end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 5))
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[3])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, over - 1) end
if ARGV[2] == '1' then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[4]) end
return {1, tostring(seq)}
`)

// transitionScript moves a command from one of the states in ARGV[1]
// (space-separated) to ARGV[2], atomically.
// KEYS: cmd hash, active zset. ARGV: from, to, now ms, retention ms,
// field, value, ... (set together with the state).
// Entering "sent" sets sent_at once, last_sent_at and counts attempts;
// "sent" -> "sent" is a resend. Entering succeeded or failed sets
// delivered_at if no receipt came. A final state sets finished_at, leaves
// the active queue and starts the retention clock.
// Returns {1, old state, hash} done, {0, current state, hash} refused,
// {-1, ”} no command; hash is the command as it now is (field, value,
// ...), so that the caller need not read it again. It reads the hash once
// and writes it once: two calls, four for a final state.
var transitionScript = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
local cur = f['state']
if not cur then return {-1, ''} end
local ok = false
for st in string.gmatch(ARGV[1], '%S+') do
  if st == cur then ok = true end
end
if not ok then return {0, cur, h} end
local to, now = ARGV[2], ARGV[3]
local set = {'state', to}
for i = 5, #ARGV do set[#set + 1] = ARGV[i] end
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
redis.call('HSET', KEYS[1], unpack(set))
for i = 1, #set, 2 do f[set[i]] = set[i + 1] end
if final then
  redis.call('ZREM', KEYS[2], f['id'])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local out = {}
for k, v in pairs(f) do out[#out + 1] = k; out[#out + 1] = v end
return {1, cur, out}
`)

// lateScript records a result for a command that has already ended.
// KEYS: cmd hash. ARGV: field, value, ... Returns the command as it now is
// (HGETALL), empty when there is no command.
var lateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], unpack(ARGV))
return redis.call('HGETALL', KEYS[1])
`)

// transition moves command cid of dev from one of from to to, with extra
// fields, and on success counts it and emits the event. It returns the
// command as the script left it (one round trip: the script returns the
// hash) and the previous state; ok is false when the command was in
// another state (then c is the command unchanged, in that state).
func (s *Service) transition(ctx context.Context, dev, cid string, from []string, to string, extra map[string]any) (c Command, prev string, ok bool, err error) {
	now := s.now()
	args := []any{strings.Join(from, " "), to, now.UnixMilli(), s.cfg.Retention.Milliseconds()}
	for k, v := range extra {
		args = append(args, k, v)
	}
	res, err := transitionScript.Run(ctx, s.rdb, []string{s.cmdKey(dev, cid), s.devKeys(dev).active}, args...).Slice()
	if err != nil {
		return Command{}, "", false, backend.Unavailable("command "+cid+" -> "+to, err)
	}
	code, _ := res[0].(int64)
	cur, _ := res[1].(string)
	if code == -1 || len(res) < 3 {
		return Command{}, "", false, backend.Errorf(backend.CodeNotFound, "id", "no command %q", cid)
	}
	c = parse(flatHash(res[2]))
	if code == 0 {
		return c, cur, false, nil
	}
	s.m.total.WithLabelValues(to).Inc()
	if Final(to) {
		s.m.latency.Observe(now.Sub(c.CreatedAt).Seconds())
	}
	s.emit(ctx, c, cur)
	return c, cur, true, nil
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
// and appends it to the device's audit stream.
func (s *Service) emit(ctx context.Context, c Command, from string) {
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
	if err := s.fleet.Emit(ctx, c.Device, topics.EventCommand, data); err != nil {
		s.log.Error().Err(err).Str("device", c.Device).Str("command", c.ID).Msg("emit command event")
	}
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
