package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// Job is a job as the API shows it.
type Job struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"` // KindConfig, KindCommand or KindFirmware
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"` // why it ended, when it did not complete
	Spec   Spec   `json:"spec"`
	By     string `json:"created_by,omitempty"`

	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`

	// Counts has every device state (DeviceStates), zero ones included.
	Counts map[string]int `json:"counts"`
	Total  int            `json:"total"`
	// Percent is the share of devices whose part has ended, by any
	// outcome.
	Percent float64 `json:"percent"`
	// Phase is "canary" while the canary batch runs.
	Phase string `json:"phase,omitempty"`

	nextAt int64 // unix ms: when the next batch may be issued
}

// Fields of the job hash.
const (
	fSpec     = "spec"
	fKind     = "kind"
	fState    = "state"
	fReason   = "reason"
	fBy       = "by"
	fCreated  = "created_at"
	fStarted  = "started_at"
	fFinished = "finished_at"
	fNextAt   = "next_at"
	fSeq      = "seq"
	fPhase    = "phase"
	countPfx  = "n_"
)

// jobKeys are the keys of one job, all in its hash slot.
type jobKeys struct{ job, devs, why, at, ref, queue, flight string }

func (s *Service) jk(jid string) jobKeys {
	p := s.keys.Prefix() + "{job:" + jid + "}:"
	return jobKeys{p + "job", p + "devs", p + "why", p + "at", p + "ref", p + "queue", p + "flight"}
}

func (k jobKeys) all() []string {
	return []string{k.job, k.devs, k.why, k.at, k.ref, k.queue, k.flight}
}

func (s *Service) indexKey() string  { return s.keys.Global("jobs") }
func (s *Service) activeKey() string { return s.keys.Global("jobs:active") }

// partKey is the hold a device's in-flight part of kind keeps.
func (s *Service) partKey(dev, kind string) string { return s.keys.Dev(dev, "jobpart:"+kind) }

// addScript adds devices to a job that is not final, each once, queued.
// KEYS: job, devs, queue. ARGV: devices. Returns how many were new.
var addScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if st == false or st == 'completed' or st == 'aborted' or st == 'cancelled' or st == 'expired' then return -1 end
local n = 0
for i = 1, #ARGV do
  if redis.call('HSETNX', KEYS[2], ARGV[i], 'queued') == 1 then
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[1], 'n_queued', n) end
return n
`)

// moveScript moves one device from one of the states in ARGV[2] (comma
// separated) to ARGV[3], keeping counters, queue and flight set in step.
// KEYS: job, devs, why, at, ref, queue, flight. ARGV: device, from, to,
// reason, now ms, ref. Returns the state it was in when it moved, or
// false (it was in none of from).
var moveScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur == false then return false end
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
if not ok then return false end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[4] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) else redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
if ARGV[3] == 'in_progress' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
  redis.call('SADD', KEYS[7], ARGV[1])
end
if cur == 'in_progress' then redis.call('SREM', KEYS[7], ARGV[1]) end
if ARGV[3] ~= 'queued' then redis.call('ZREM', KEYS[6], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'n_' .. cur, -1)
redis.call('HINCRBY', KEYS[1], 'n_' .. ARGV[3], 1)
return cur
`)

// stateScript sets the job's state when it is one of ARGV[2] (comma
// separated). KEYS: job. ARGV: to, from, reason, field to stamp, now ms.
// Returns the state it was in, or false with the current one as an error
// reply's text... (a table {0, current} then).
var stateScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == false then return {-1, ''} end
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'state', ARGV[1])
    if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
    if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
    return {1, cur}
  end
end
return {0, cur}
`)

// releaseScript deletes a part hold when it is still the job's.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// move is moveScript; it reports whether the device moved.
func (s *Service) move(ctx context.Context, jid, dev, from, to, reason, ref string) (bool, error) {
	k := s.jk(jid)
	err := moveScript.Run(ctx, s.rdb, k.all(), dev, from, to, reason, s.now().UnixMilli(), ref).Err()
	if err == redis.Nil {
		return false, nil
	}
	if err != nil {
		return false, backend.Unavailable("job "+jid+": move "+dev, err)
	}
	return true, nil
}

// setState moves job jid to state `to` from one of from. It returns
// whether it moved and the state it found.
func (s *Service) setState(ctx context.Context, jid, to, from, reason, stamp string) (bool, string, error) {
	res, err := stateScript.Run(ctx, s.rdb, []string{s.jk(jid).job}, to, from, reason, stamp, s.now().UnixMilli()).Slice()
	if err != nil {
		return false, "", backend.Unavailable("job "+jid+": set state", err)
	}
	code, _ := res[0].(int64)
	cur, _ := res[1].(string)
	if code == -1 {
		return false, "", notFound(jid)
	}
	return code == 1, cur, nil
}

func notFound(jid string) error { return backend.Errorf(backend.CodeNotFound, "jid", "no job %q", jid) }

// addDevices queues devs in job jid (those not in it already), in
// chunks. It returns how many joined.
func (s *Service) addDevices(ctx context.Context, jid string, devs []string) (int, error) {
	k := s.jk(jid)
	n := 0
	for len(devs) > 0 {
		chunk := devs[:min(500, len(devs))]
		devs = devs[len(chunk):]
		args := make([]any, len(chunk))
		for i, d := range chunk {
			args[i] = d
		}
		got, err := addScript.Run(ctx, s.rdb, []string{k.job, k.devs, k.queue}, args...).Int()
		if err != nil {
			return n, backend.Unavailable("job "+jid+": add devices", err)
		}
		if got < 0 {
			return n, nil // the job ended meanwhile
		}
		n += got
	}
	return n, nil
}

// validJID reports whether jid can be a job ID (a ULID), so that a bad
// one is a 404 without a Redis round trip or a stray key.
func validJID(jid string) bool {
	_, err := ulid.ParseStrict(jid)
	return err == nil
}

// load reads job jid.
func (s *Service) load(ctx context.Context, jid string) (*Job, error) {
	if !validJID(jid) {
		return nil, notFound(jid)
	}
	h, err := s.rdb.HGetAll(ctx, s.jk(jid).job).Result()
	if err != nil {
		return nil, backend.Unavailable("load job "+jid, err)
	}
	if len(h) == 0 {
		return nil, notFound(jid)
	}
	return parseJob(jid, h)
}

func parseJob(jid string, h map[string]string) (*Job, error) {
	j := &Job{ID: jid, Kind: h[fKind], State: h[fState], Reason: h[fReason], By: h[fBy], Phase: h[fPhase],
		Counts: make(map[string]int, len(DeviceStates))}
	if err := json.Unmarshal([]byte(h[fSpec]), &j.Spec); err != nil {
		return nil, fmt.Errorf("load job %s: spec: %w", jid, err)
	}
	j.CreatedAt = time.UnixMilli(atoi(h[fCreated])).UTC()
	j.StartedAt, j.FinishedAt = msTime(h[fStarted]), msTime(h[fFinished])
	j.nextAt = atoi(h[fNextAt])
	ended := 0
	for _, st := range DeviceStates {
		n := int(atoi(h[countPfx+st]))
		j.Counts[st] = n
		j.Total += n
		if st != DevQueued && st != DevInProgress {
			ended += n
		}
	}
	if j.Total > 0 {
		j.Percent = float64(int(1000*float64(ended)/float64(j.Total))) / 10
	}
	return j, nil
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func msTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	t := time.UnixMilli(atoi(s)).UTC()
	return &t
}
