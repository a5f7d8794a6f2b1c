package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
	"github.com/redis/go-redis/v9"
)

// maxDropped bounds Message.Dropped so that the per-device counter can
// never overflow Redis's int64; a real device reports far fewer.
const maxDropped = 1 << 40

var _ backend.UplinkHandler = (*Store)(nil).Ingest

// Ingest verifies, decodes and stores one telemetry batch of dev. It has
// the backend.UplinkHandler signature. A body that is not a valid batch
// (bad JSON, truncated or corrupt dz1 data, unknown register codes, samples
// after now+MaxFuture, over the size limit) returns a *backend.Error with
// CodeInvalid wrapping the decode error, and nothing is stored. A batch
// already stored (same first sample time and seq) is counted and dropped.
func (s *Store) Ingest(ctx context.Context, dev string, m envelope.Message) error {
	return s.ingest(ctx, dev, m, nil)
}

// NonceChecker is the backend's replay check, for IngestChecked;
// *backend.Service implements it.
type NonceChecker interface {
	NonceKeys(dev string) []string
	NonceArgs(n uint64) ([]any, error)
	AcceptNonce(ctx context.Context, dev string, n uint64) error
}

// IngestChecked is Ingest with the uplink replay check in the same
// script, one round trip per batch: wire it with
// svc.HandleChecked(topics.KindTelemetry, st.IngestChecked(svc)). A
// batch refused before the script runs (bad body, past the retention)
// still has its nonce checked first, as the backend would.
func (s *Store) IngestChecked(nc NonceChecker) backend.UplinkHandler {
	return func(ctx context.Context, dev string, m envelope.Message) error {
		return s.ingest(ctx, dev, m, nc)
	}
}

func (s *Store) ingest(ctx context.Context, dev string, m envelope.Message, nc NonceChecker) error {
	now := s.now()
	refused := func() error { // the nonce check when the script does not run
		if nc == nil {
			return nil
		}
		return nc.AcceptNonce(ctx, dev, m.Nonce)
	}
	msg, b, reason, err := decode(m.Body, wire.Limits{MaxSamples: s.cfg.MaxSamples, NotAfter: now.Add(s.cfg.MaxFuture)})
	if err != nil {
		if nerr := refused(); nerr != nil {
			return nerr
		}
		s.m.rejected.WithLabelValues(reason).Inc()
		return &backend.Error{Code: backend.CodeInvalid, Field: "telemetry", Message: "telemetry batch rejected: " + reason, Err: err}
	}
	minID := max(now.Add(-s.cfg.Retention).UnixMilli(), 0)
	n := len(b.Samples)
	if n > 0 && b.Samples[n-1].Time < minID {
		if nerr := refused(); nerr != nil {
			return nerr
		}
		s.m.rejected.WithLabelValues(ReasonExpired).Inc()
		s.log.Warn().Str("device", dev).Uint64("seq", b.Seq).Int64("last_sample_ms", b.Samples[n-1].Time).
			Msg("telemetry batch older than the retention dropped")
		return nil
	}
	k := s.keysOf(dev)
	keys, args := []string{k.stream, k.seen, k.state}, s.scriptArgs(msg, b, now.UnixMilli(), minID)
	script := ingestScript
	if nc != nil {
		nargs, err := nc.NonceArgs(m.Nonce)
		if err != nil {
			return err
		}
		keys, args, script = append(nc.NonceKeys(dev), keys...), append(nargs, args...), checkedIngestScript
	}
	res, err := script.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return fmt.Errorf("ingest telemetry %s: %w", dev, err)
	}
	if tag, _ := res[0].(string); tag == "nonce" && len(res) == 3 {
		code, _ := res[1].(int64)
		high, _ := res[2].(string)
		return backend.NonceRefused(dev, m.Nonce, code, high)
	}
	if stored, _ := res[0].(int64); stored == 0 {
		s.m.rejected.WithLabelValues(ReasonDuplicate).Inc()
		s.log.Debug().Str("device", dev).Uint64("seq", b.Seq).Msg("duplicate telemetry batch dropped")
		return nil
	}
	failures := b.Failures()
	s.m.batches.Inc()
	s.m.samples.Add(float64(n))
	s.m.missing.WithLabelValues(CauseDropped).Add(float64(b.Dropped))
	s.m.missing.WithLabelValues(CauseReadFailure).Add(float64(failures))
	return nil
}

// decode parses an uplink telemetry body and checks its batch under lim.
// On error it returns the rejection reason.
func decode(body []byte, lim wire.Limits) (wire.Message, wire.Batch, string, error) {
	var env wire.Body
	if fast, ok := parseBody(body); ok {
		env.Telemetry = &fast
	} else if err := json.Unmarshal(body, &env); err != nil {
		return wire.Message{}, wire.Batch{}, ReasonBadJSON, fmt.Errorf("decode telemetry body: %w", err)
	}
	if env.Telemetry == nil {
		return wire.Message{}, wire.Batch{}, ReasonBadJSON, errors.New("decode telemetry body: no telemetry object")
	}
	m := *env.Telemetry
	b, err := m.Batch(lim)
	if err != nil {
		return wire.Message{}, wire.Batch{}, reasonOf(err), fmt.Errorf("decode telemetry body: %w", err)
	}
	if b.Dropped > maxDropped {
		return wire.Message{}, wire.Batch{}, ReasonBadMessage,
			fmt.Errorf("decode telemetry body: %w: dropped %d out of range", wire.ErrFormat, b.Dropped)
	}
	return m, b, "", nil
}

// reasonOf maps a Message.Batch error to a rejection reason.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, wire.ErrTruncated):
		return ReasonTruncated
	case errors.Is(err, wire.ErrUnknownRegister):
		return ReasonUnknownRegister
	case errors.Is(err, wire.ErrFuture):
		return ReasonFuture
	case errors.Is(err, wire.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, wire.ErrFormat):
		return ReasonBadMessage
	default:
		return ReasonCorrupt
	}
}

// dedupeMember identifies a batch across redeliveries. Seq restarts at 1
// when a device reboots, so it is paired with the first sample time; an
// empty batch (only a dropped count) has none and is paired with its
// counters instead.
func dedupeMember(b wire.Batch) string {
	if len(b.Samples) == 0 {
		return "e:" + strconv.FormatUint(b.Seq, 10) + ":" + strconv.FormatUint(b.Dropped, 10) +
			":" + strconv.FormatUint(b.Adapter.Requests, 10)
	}
	return strconv.FormatInt(b.Samples[0].Time, 10) + ":" + strconv.FormatUint(b.Seq, 10)
}

// scriptArgs builds ingestScript's ARGV for batch b carried by m.
func (s *Store) scriptArgs(m wire.Message, b wire.Batch, nowMS, minID int64) []any {
	first, last, span := "", "", "0"
	if n := len(b.Samples); n > 0 {
		f, l := b.Samples[0].Time, b.Samples[n-1].Time
		first, last, span = strconv.FormatInt(f, 10), strconv.FormatInt(l, 10), strconv.FormatInt(l-f, 10)
	}
	args := make([]any, 0, 14+3*len(b.Registers)+14)
	args = append(args,
		dedupeMember(b), nowMS, minID, s.cfg.Retention.Milliseconds(), s.cfg.DedupeWindow,
		first, last, span, strconv.FormatUint(b.Seq, 10), m.Data,
		len(b.Samples), b.Dropped, b.Failures(), 0)
	nlatest := 0
	for j, code := range b.Registers {
		reg, _ := wire.RegisterByCode(code) // Decode accepts known codes only
		for i := len(b.Samples) - 1; i >= 0; i-- {
			if smp := b.Samples[i]; smp.Present(j) {
				args = append(args, reg.Name, smp.Time, smp.Values[j])
				nlatest++
				break
			}
		}
	}
	args[13] = nlatest
	a := b.Adapter
	for _, f := range []struct {
		name string
		v    uint64
	}{
		{"requests", a.Requests}, {"retries", a.Retries}, {"crc_errors", a.CRCErrors},
		{"frame_errors", a.FrameErrors}, {"exceptions", a.Exceptions}, {"timeouts", a.Timeouts},
		{"failures", a.Failures},
	} {
		args = append(args, adapterPrefix+f.name, strconv.FormatUint(f.v, 10))
	}
	return args
}

// Field names and prefixes of the tmstate hash.
const (
	latestPrefix  = "r:" // r:<register name> = "<ms>:<raw>"
	adapterPrefix = "a:" // a:<counter> = adapter counter of the last batch
)

// ingestScript stores one batch atomically, in one round trip.
//
// KEYS: stream, seen, state.
// ARGV: 1 dedupe member, 2 now ms, 3 min ID ms (now - retention), 4 TTL
// ms, 5 dedupe window, 6 first sample ms ("" for an empty batch), 7 last
// sample ms, 8 span ms, 9 seq, 10 dz1 data, 11 samples, 12 dropped,
// 13 failures, 14 n, then n × (register name, ms, raw) of the latest
// values, then the adapter counters as field/value pairs.
// Returns {1, stream ID} when stored, {0, ""} for a duplicate.
//
// The stream ID is the first sample's ms, so XRANGE finds batches by time.
// A batch older than the stream's top (device clock stepped back) gets the
// top's ms instead, and the state's lag field records the largest such
// shift, which Query widens its range by; span records the longest batch.
// Times stay strings: Lua numbers are exact to 2^53, and seq may exceed it.
var ingestScript = redis.NewScript(ingestLua)

// checkedIngestScript is backend.ReplayLua, then ingestScript: KEYS and
// ARGV are the replay check's three each, then ingestScript's. Returns
// {"nonce", code, high} when the nonce is refused (nothing stored), else
// as ingestScript.
var checkedIngestScript = redis.NewScript("local function REFUSE(c, h) return {'nonce', c, h} end\n" +
	backend.ReplayLua + "local KEYS = {KEYS[4], KEYS[5], KEYS[6]}\nlocal ARGV = {unpack(ARGV, 4)}\n" + ingestLua)

const ingestLua = `
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return {0, ''}
end
local id = ''
if ARGV[6] ~= '' then
  local f = tonumber(ARGV[6])
  local idms = ARGV[6]
  local st = redis.call('HMGET', KEYS[3], 'sid', 'span', 'lag', 'last_sample')
  if st[1] and tonumber(st[1]) > tonumber(idms) then idms = st[1] end
  if tonumber(ARGV[3]) > tonumber(idms) then idms = ARGV[3] end
  id = redis.call('XADD', KEYS[1], 'MINID', ARGV[3], idms .. '-*',
    'd', ARGV[10], 'seq', ARGV[9], 'f', ARGV[6], 'l', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  local upd = {'sid', idms}
  if not st[2] or tonumber(ARGV[8]) > tonumber(st[2]) then
    upd[#upd+1] = 'span'; upd[#upd+1] = ARGV[8]
  end
  local lag = tonumber(idms) - f
  if lag > tonumber(st[3] or '0') then
    upd[#upd+1] = 'lag'; upd[#upd+1] = lag
  end
  if not st[4] or tonumber(ARGV[7]) > tonumber(st[4]) then
    upd[#upd+1] = 'last_sample'; upd[#upd+1] = ARGV[7]
  end
  redis.call('HSET', KEYS[3], unpack(upd))
end
local i = 15
local n = tonumber(ARGV[14])
if n > 0 then
  local fields = {}
  for j = 0, n - 1 do fields[j+1] = 'r:' .. ARGV[i + 3*j] end
  local cur = redis.call('HMGET', KEYS[3], unpack(fields))
  local upd = {}
  for j = 0, n - 1 do
    local ms = ARGV[i + 3*j + 1]
    local c = cur[j+1]
    local cms = c and string.match(c, '^(%d+):')
    if not cms or tonumber(ms) > tonumber(cms) then
      upd[#upd+1] = fields[j+1]; upd[#upd+1] = ms .. ':' .. ARGV[i + 3*j + 2]
    end
  end
  if #upd > 0 then redis.call('HSET', KEYS[3], unpack(upd)) end
  i = i + 3*n
end
local batches = redis.call('HINCRBY', KEYS[3], 'batches', 1)
redis.call('HINCRBY', KEYS[3], 'samples', ARGV[11])
redis.call('HINCRBY', KEYS[3], 'dropped', ARGV[12])
redis.call('HINCRBY', KEYS[3], 'failures', ARGV[13])
local rest = {'last_upload', ARGV[2], 'last_seq', ARGV[9]}
for j = i, #ARGV do rest[#rest+1] = ARGV[j] end
redis.call('HSET', KEYS[3], unpack(rest))
redis.call('ZADD', KEYS[2], batches, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, id}
`
