package fota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// StatePending is the backend's state of an update whose manifest was sent
// but which the device has not reported on yet.
const StatePending = "pending"

// progressAt is the device hash field holding when the active update
// last made progress (unix ms): its start, a change of chunks received,
// or a change of state reported for its target. The update timeout counts
// from it, so repeated statuses that show no progress (a device refusing
// the manifest again at every resend) cannot keep an update alive.
const progressAt = "fota_progress_at"

// activeKey indexes devices with an active update.
func (s *Service) activeKey() string { return s.keys.Global("fota:active") }

// startScript starts an update on a device: refused when the device does
// not exist (0) or has an active update (-1); 2 when the device already
// has the active update a rollout asks for (a rollout restarting its
// pending device after a crash or a lost reply: nothing to do).
// KEYS: dev hash. ARGV: target, rollout, now ms, total chunks.
var startScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HMGET', KEYS[1], 'fota_active', 'fota_rollout', 'fota_target')
if cur[1] == '1' then
  if ARGV[2] ~= '' and cur[2] == ARGV[2] and cur[3] == ARGV[1] then return 2 end
  return -1
end
redis.call('HSET', KEYS[1], 'fota_target', ARGV[1], 'fota_rollout', ARGV[2], 'fota_active', '1',
  'fota_result', '', 'fota_state', 'pending', 'fota_version', ARGV[1], 'fota_received', '0',
  'fota_total', ARGV[4], 'fota_reason', '', 'fota_detail', '', 'fota_started_at', ARGV[3],
  'fota_updated_at', ARGV[3], 'fota_sent_at', ARGV[3], 'fota_progress_at', ARGV[3], 'fota_rebooted', '0')
return 1
`)

// StartUpdate starts updating dev to version and sends it the manifest.
// rollout names the rollout starting it ("" for a single update). A device
// already running version (or a newer one, which it would refuse as a
// downgrade) is CodeConflict, as is a device with an update in progress,
// unless it is this rollout's update to version (then StartUpdate does
// nothing and succeeds); an unknown device or version is CodeNotFound. An offline device gets
// the manifest when it comes back (HandleBirth).
func (s *Service) StartUpdate(ctx context.Context, dev, version, rollout string) (backend.DeviceFOTA, error) {
	d, err := s.fleet.Device(ctx, dev)
	if err != nil {
		return backend.DeviceFOTA{}, err
	}
	if err := startable(d); err != nil {
		return backend.DeviceFOTA{}, err
	}
	f, err := s.load(ctx, version)
	if err != nil {
		return backend.DeviceFOTA{}, err
	}
	if d.FirmwareVersion != "" {
		if err := wire.CheckUpgrade(d.FirmwareVersion, version); err != nil {
			return backend.DeviceFOTA{}, &backend.Error{Code: backend.CodeConflict, Field: "version", Err: err,
				Message: fmt.Sprintf("device %s runs %s; %s is not newer (roll back instead)", dev, d.FirmwareVersion, version)}
		}
	}
	now := s.now()
	n, err := startScript.Run(ctx, s.rdb, []string{s.keys.Device(dev)}, version, rollout, now.UnixMilli(), f.Chunks).Int()
	if err != nil {
		return backend.DeviceFOTA{}, backend.Unavailable("start update of "+dev, err)
	}
	switch n {
	case 0:
		return backend.DeviceFOTA{}, backend.Errorf(backend.CodeNotFound, "id", "no device %q", dev)
	case -1:
		return backend.DeviceFOTA{}, backend.Errorf(backend.CodeConflict, "id", "device %s has a firmware update in progress", dev)
	case 2:
		return s.DeviceStatus(ctx, dev) // already started by this rollout
	}
	if err := s.rdb.ZAdd(ctx, s.activeKey(), redis.Z{Score: float64(now.UnixMilli()), Member: dev}).Err(); err != nil {
		return backend.DeviceFOTA{}, backend.Unavailable("start update of "+dev+": index", err)
	}
	s.log.Info().Str("device", dev).Str("version", version).Str("rollout", rollout).Msg("firmware update started")
	if err := s.fleet.Send(ctx, dev, topics.KindFOTAManifest, f.body); err != nil {
		// The sweep sends it again after ManifestResend.
		s.log.Warn().Err(err).Str("device", dev).Msg("send manifest")
	}
	s.emit(ctx, dev, map[string]any{"state": StatePending, "version": version, "rollout": rollout, "total_chunks": f.Chunks})
	return s.DeviceStatus(ctx, dev)
}

// DeviceStatus returns dev's FOTA progress (zero State "idle" when the
// device never had an update). An unknown device is CodeNotFound.
func (s *Service) DeviceStatus(ctx context.Context, dev string) (backend.DeviceFOTA, error) {
	d, err := s.fleet.Device(ctx, dev)
	if err != nil {
		return backend.DeviceFOTA{}, err
	}
	if d.FOTA == nil {
		return backend.DeviceFOTA{State: string(wire.StateIdle)}, nil
	}
	return *d.FOTA, nil
}

// servedTTL is how long the record of the chunks served to a device for a
// version (servedKey) is kept after the last chunk: an update restarted
// later resumes from the device's bitmap without asking for them again.
const servedTTL = 30 * 24 * time.Hour

// servedKey is the bitmap of the chunks of version served to dev: the
// evidence that a device reporting a download done was sent every chunk.
func (s *Service) servedKey(dev, version string) string {
	return s.keys.Dev(dev, "fota_served:"+version)
}

// serveLua admits a fota_request: only for the device's active update
// target, and within its byte budget, a token bucket kept in the device
// hash (fota_tokens, fota_tokens_at) so that every replica shares it.
// Admitted chunks are marked in the served bitmap and their downlink
// nonces reserved (backend.TxNonceBlockLua), so that answering a request
// costs this one script and no other round trip.
// KEYS: dev hash, served bitmap, txnonce. ARGV: version, now ms, rate
// bytes/s, burst bytes, cost bytes, ttl ms, nonce floor (now µs), chunk
// indices...
// Returns {1, last nonce} admitted, {0} unknown device, {-1, target,
// active} not the target, {-2, tokens} over budget.
const serveLua = backend.TxNonceBlockLua + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local h = redis.call('HMGET', KEYS[1], 'fota_active', 'fota_target', 'fota_tokens', 'fota_tokens_at')
if h[1] ~= '1' or h[2] ~= ARGV[1] then return {-1, h[2] or '', h[1] or '0'} end
local now, rate, burst, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = burst
if h[3] and h[4] then
  tokens = math.min(burst, tonumber(h[3]) + math.max(0, now - tonumber(h[4])) * rate / 1000)
end
if tokens < cost then return {-2, tostring(math.floor(tokens))} end
redis.call('HSET', KEYS[1], 'fota_tokens', tostring(tokens - cost), 'fota_tokens_at', ARGV[2])
for i = 8, #ARGV do redis.call('SETBIT', KEYS[2], tonumber(ARGV[i]), 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {1, txblock(KEYS[3], ARGV[7], #ARGV - 7)}
`

// serveScript is serveLua on its own (HandleRequest).
var serveScript = redis.NewScript(serveLua)

// checkedServeScript is backend.ReplayLua, then serveLua: KEYS are the
// replay check's three (the third is the device hash), then the served
// bitmap and txnonce; ARGV the replay check's three, then serveLua's.
// Returns {'nonce', code, high} when the nonce is refused (nothing
// written), else as serveLua.
var checkedServeScript = redis.NewScript("local function REFUSE(c, h) return {'nonce', c, h} end\n" +
	backend.ReplayLua + "local KEYS = {KEYS[3], KEYS[4], KEYS[5]}\nlocal ARGV = {unpack(ARGV, 4)}\n" + serveLua)

// HandleRequest answers a device's fota_request with exactly the chunks
// it names, in the order named. A request for an unknown version or an
// index beyond the manifest, or for a version that is not the device's
// active update target, is a bad body (a security event), and nothing is
// sent. A request over the device's byte budget (ChunkRate, ChunkBurst)
// is counted and gets nothing: the device asks again after its chunk
// timeout. The uplink's replay check is the backend's (Handle); Attach
// wires handleRequestChecked instead.
func (s *Service) HandleRequest(ctx context.Context, dev string, m envelope.Message) error {
	return s.handleRequest(ctx, dev, m, false)
}

// handleRequestChecked is HandleRequest with the uplink replay check in
// the same script (backend.HandleChecked): one round trip per request. A
// request refused before the script runs (bad body, unknown version,
// chunk out of range) still has its nonce checked first.
func (s *Service) handleRequestChecked(ctx context.Context, dev string, m envelope.Message) error {
	return s.handleRequest(ctx, dev, m, true)
}

func (s *Service) handleRequest(ctx context.Context, dev string, m envelope.Message, checked bool) error {
	refused := func(err error) error { // the nonce check when the script does not run
		if checked {
			if nerr := s.fleet.AcceptNonce(ctx, dev, m.Nonce); nerr != nil {
				return nerr
			}
		}
		return err
	}
	req, err := wire.ParseRequest(m.Body)
	if err != nil {
		return refused(invalid("", err, "fota_request: %v", err))
	}
	f, err := s.load(ctx, req.Version)
	if errors.Is(err, backend.ErrNotFound) {
		return refused(invalid("", err, "fota_request for firmware %q, which is not uploaded", req.Version))
	}
	if err != nil {
		return err // transient: retried, the nonce not yet spent
	}
	for _, c := range req.Chunks {
		if c >= f.Chunks {
			return refused(backend.Errorf(backend.CodeInvalid, "", "fota_request: chunk %d of firmware %s, which has %d", c, f.Version, f.Chunks))
		}
	}
	now := s.now()
	keys := []string{s.keys.Device(dev), s.servedKey(dev, f.Version), s.keys.TxNonce(dev)}
	args := make([]any, 0, 10+len(req.Chunks))
	script := serveScript
	if checked {
		nargs, err := s.fleet.NonceArgs(m.Nonce)
		if err != nil {
			return err // above 2^53-1: stale
		}
		keys = append(s.fleet.NonceKeys(dev), keys[1:]...)
		args, script = append(args, nargs...), checkedServeScript
	}
	args = append(args, f.Version, now.UnixMilli(), s.cfg.ChunkRate, s.cfg.ChunkBurst,
		len(req.Chunks)*f.ChunkSize, servedTTL.Milliseconds(), now.UnixMicro())
	for _, c := range req.Chunks {
		args = append(args, c)
	}
	res, err := script.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return backend.Unavailable("fota_request of "+dev, err)
	}
	if tag, _ := res[0].(string); tag == "nonce" && len(res) == 3 {
		code, _ := res[1].(int64)
		high, _ := res[2].(string)
		return backend.NonceRefused(dev, m.Nonce, code, high)
	}
	switch code, _ := res[0].(int64); code {
	case 0:
		return nil // removed meanwhile
	case -1:
		target, _ := res[1].(string)
		if res[2] != "1" {
			return backend.Errorf(backend.CodeInvalid, "", "fota_request for firmware %s, which is not the target of an active update (none)", f.Version)
		}
		return backend.Errorf(backend.CodeInvalid, "", "fota_request for firmware %s, which is not the target of the active update (%s)", f.Version, target)
	case -2:
		s.m.limited.Inc()
		s.log.Warn().Str("device", dev).Str("version", f.Version).Int("chunks", len(req.Chunks)).
			Str("tokens", fmt.Sprint(res[1])).Msg("fota_request over the device's byte budget: no chunk sent")
		return nil
	}
	last, _ := res[1].(int64)
	data, err := s.chunks(ctx, f, req.Chunks)
	if err != nil {
		return err
	}
	payloads := make([][]byte, len(data))
	for i, b := range data {
		if payloads[i], err = wire.EncodeChunk(wire.Chunk{Version: f.Version, Index: req.Chunks[i], Data: b}); err != nil {
			return fmt.Errorf("fota_request of %s: %w", dev, err)
		}
	}
	first := uint64(last) - uint64(len(payloads)) + 1
	if err := s.fleet.SendBinaryFrom(ctx, dev, topics.KindFOTAChunk, first, now, payloads...); err != nil {
		return fmt.Errorf("fota_request of %s: %w", dev, err)
	}
	s.m.chunks.Add(float64(len(payloads)))
	return nil
}

// statusScript admits a fota_status and records it in the device hash,
// ending the active update when the status is final for its target.
//
// Admission (PROTOCOL.md 12.7, "Status admission"): a status for the
// target of the device's current or last update must follow what the
// backend saw: downloading at most the chunks served, verifying and later
// states only once every chunk was served, succeeded only after a reboot
// was reported (rebooting, pending_verify, or a signed birth running the
// target); failed is allowed at any step. A status for another version is
// recorded only as the answer to a rollback the backend asked for; other
// final ones are refused, except succeeded or failed for the version the
// device runs (its signed birth says so: a device repeating its state, or
// refusing a manifest it could not parse), which are ignored like every
// non-final one. Refused: {-2, why}; ignored: {-1}.
// Otherwise returns {0} for an unknown device, else {1 or 2 (update
// ended), previous state, previous received, rollout, same version}.
// A status for the target that changes the chunks received or the state
// is progress (fota_progress_at).
// KEYS: dev hash, served bitmap of the status's version. ARGV: state,
// version, received, total, reason, detail, now ms, final (0/1), chunks of
// that version (-1 when not uploaded).
const statusLua = `
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local prev = redis.call('HMGET', KEYS[1], 'fota_state', 'fota_received', 'fota_active', 'fota_target', 'fota_rollout',
  'fota_version', 'fota_rebooted', 'firmware_version', 'fota_rollback_req')
local st, ver = ARGV[1], ARGV[2]
local final = ARGV[8] == '1'
if ver == '' or ver ~= prev[4] then
  if (st == 'rolled_back' or st == 'failed') and prev[9] == '1' then
    -- the answer to a rollback request: admitted
  elseif final and not ((st == 'succeeded' or st == 'failed') and ver == prev[8]) then
    return {-2, st .. ' for version ' .. ver .. ', which was never offered to this device'}
  else
    return {-1}
  end
else
  local total = tonumber(ARGV[9])
  local served = redis.call('BITCOUNT', KEYS[2])
  if st == 'downloading' then
    if tonumber(ARGV[3]) > served then
      return {-2, 'downloading with ' .. ARGV[3] .. ' chunks received, ' .. served .. ' served'}
    end
  elseif st ~= 'failed' and st ~= 'idle' and (total < 0 or served < total) then
    return {-2, st .. ' after ' .. served .. ' of ' .. ARGV[9] .. ' chunks served'}
  end
  if st == 'succeeded' and prev[7] ~= '1' and prev[8] ~= ver then
    return {-2, 'succeeded with no reboot reported'}
  end
  if st == 'rebooting' or st == 'pending_verify' then redis.call('HSET', KEYS[1], 'fota_rebooted', '1') end
end
if (st == 'rolled_back' or st == 'failed') and prev[9] == '1' then redis.call('HDEL', KEYS[1], 'fota_rollback_req') end
redis.call('HSET', KEYS[1], 'fota_state', ARGV[1], 'fota_version', ARGV[2], 'fota_received', ARGV[3],
  'fota_total', ARGV[4], 'fota_reason', ARGV[5], 'fota_detail', ARGV[6], 'fota_updated_at', ARGV[7])
if prev[3] == '1' and prev[4] == ARGV[2] and (prev[1] ~= ARGV[1] or prev[2] ~= ARGV[3]) then
  redis.call('HSET', KEYS[1], 'fota_progress_at', ARGV[7])
end
local ended = 1
if final and prev[3] == '1' and prev[4] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'fota_active', '0', 'fota_result', ARGV[1])
  ended = 2
end
local same = '0'
if prev[6] == ARGV[2] then same = '1' end
return {ended, prev[1] or '', prev[2] or '0', prev[5] or '', same}
`

// statusScript is statusLua on its own (HandleStatus).
var statusScript = redis.NewScript(statusLua)

// checkedStatusScript is backend.ReplayLua, then statusLua: KEYS are the
// replay check's three (the third is the device hash), then the served
// bitmap; ARGV the replay check's three, then statusLua's. Returns
// {'nonce', code, high} when the nonce is refused (nothing written).
var checkedStatusScript = redis.NewScript("local function REFUSE(c, h) return {'nonce', c, h} end\n" +
	backend.ReplayLua + "local KEYS = {KEYS[3], KEYS[4]}\nlocal ARGV = {unpack(ARGV, 4)}\n" + statusLua)

// HandleStatus stores a device's fota_status and emits it as an event on
// every state change and every 5 % of progress. A succeeded, failed or
// rolled_back status for the active update's version ends the update.
// The uplink's replay check is the backend's (Handle); Attach wires
// handleStatusChecked instead.
func (s *Service) HandleStatus(ctx context.Context, dev string, m envelope.Message) error {
	return s.handleStatus(ctx, dev, m, false)
}

// handleStatusChecked is HandleStatus with the uplink replay check in the
// status script (backend.HandleChecked). A status refused before the
// script runs (a bad body) still has its nonce checked first.
func (s *Service) handleStatusChecked(ctx context.Context, dev string, m envelope.Message) error {
	return s.handleStatus(ctx, dev, m, true)
}

func (s *Service) handleStatus(ctx context.Context, dev string, m envelope.Message, checked bool) error {
	st, err := wire.ParseStatus(m.Body)
	if err != nil {
		if checked {
			if nerr := s.fleet.AcceptNonce(ctx, dev, m.Nonce); nerr != nil {
				return nerr
			}
		}
		return invalid("", err, "fota_status: %v", err)
	}
	final := "0"
	if st.State == wire.StateSucceeded || st.State == wire.StateFailed || st.State == wire.StateRolledBack {
		final = "1"
	}
	chunks := -1
	if st.Version != "" {
		f, err := s.load(ctx, st.Version)
		switch {
		case err == nil:
			chunks = f.Chunks
		case !errors.Is(err, backend.ErrNotFound):
			return err
		}
	}
	keys := []string{s.keys.Device(dev), s.servedKey(dev, st.Version)}
	args := []any{string(st.State), st.Version, st.ChunkReceived, st.TotalChunks, st.Reason, st.Detail, s.now().UnixMilli(), final, chunks}
	script := statusScript
	if checked {
		nargs, err := s.fleet.NonceArgs(m.Nonce)
		if err != nil {
			return err // above 2^53-1: stale
		}
		keys, args, script = append(s.fleet.NonceKeys(dev), keys[1]), append(nargs, args...), checkedStatusScript
	}
	res, err := script.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return backend.Unavailable("fota_status of "+dev, err)
	}
	if tag, _ := res[0].(string); tag == "nonce" && len(res) == 3 {
		code, _ := res[1].(int64)
		high, _ := res[2].(string)
		return backend.NonceRefused(dev, m.Nonce, code, high)
	}
	switch code, _ := res[0].(int64); code {
	case -1:
		s.log.Debug().Str("device", dev).Str("version", st.Version).Str("state", string(st.State)).Msg("fota_status about no update of ours: ignored")
		return nil
	case -2:
		why, _ := res[1].(string)
		return backend.Errorf(backend.CodeInvalid, "", "fota_status refused: %s", why)
	}
	if len(res) < 5 {
		return nil // the device was removed
	}
	ended := res[0].(int64) == 2
	prevState, _ := res[1].(string)
	prevRecv, _ := strconv.Atoi(fmt.Sprint(res[2]))
	rollout, _ := res[3].(string)
	sameVersion := res[4] == "1"
	if ended {
		s.m.updates.WithLabelValues(string(st.State)).Inc()
		s.rdb.ZRem(ctx, s.activeKey(), dev)
		s.log.Info().Str("device", dev).Str("version", st.Version).Str("result", string(st.State)).
			Str("reason", st.Reason).Str("rollout", rollout).Msg("firmware update ended")
		if rollout != "" {
			s.poke()
		}
	}
	bucket := func(n int) int {
		if st.TotalChunks == 0 {
			return 0
		}
		return n * 20 / st.TotalChunks
	}
	if ended || string(st.State) != prevState || !sameVersion || bucket(st.ChunkReceived) != bucket(prevRecv) ||
		st.ChunkReceived == st.TotalChunks && prevRecv != st.ChunkReceived || st.Reason != "" {
		ev := map[string]any{"state": st.State, "version": st.Version, "chunk_received": st.ChunkReceived,
			"total_chunks": st.TotalChunks, "running_version": st.Running}
		if st.TotalChunks > 0 {
			ev["percent"] = float64(int(1000*float64(st.ChunkReceived)/float64(st.TotalChunks))) / 10
		}
		if st.Reason != "" {
			ev["reason"], ev["detail"] = st.Reason, st.Detail
		}
		if rollout != "" {
			ev["rollout"] = rollout
		}
		s.emit(ctx, dev, ev)
	}
	return nil
}

// resendStates are the states in which a device may have lost the
// manifest (or lost its download progress), so sending it again helps; in
// the others the device is past the download.
var resendStates = []string{"", StatePending, string(wire.StateIdle), string(wire.StateDownloading),
	string(wire.StateVerifying), string(wire.StateFailed), string(wire.StateRolledBack), string(wire.StateSucceeded)}

// HandleBirth sends the manifest again to a device coming back with an
// update in progress that it has not finished downloading (resume).
func (s *Service) HandleBirth(ctx context.Context, dev string, _ envelope.Message) error {
	return s.resend(ctx, dev, false)
}

// resend sends the active update's manifest to dev when it is in one of
// resendStates; with onlyStale only when it has shown no progress for
// ManifestResend.
func (s *Service) resend(ctx context.Context, dev string, onlyStale bool) error {
	h, err := s.rdb.HMGet(ctx, s.keys.Device(dev), backend.FOTAActive, backend.FOTATarget, backend.FOTAState,
		backend.FOTAVersion, backend.FOTAUpdatedAt, backend.FOTASentAt, "online", "firmware_version").Result()
	if err != nil {
		return backend.Unavailable("resend manifest to "+dev, err)
	}
	str := func(i int) string { v, _ := h[i].(string); return v }
	active, target, state, version := str(0) == "1", str(1), str(2), str(3)
	if !active {
		return nil
	}
	// On a birth, a device already running the target (its signed birth
	// says so) is left alone while it finishes its self-test, and so is one
	// past its download. The stale sweep resends in every state: statuses
	// can be lost (with a replica that died, say), and the device answers
	// a manifest it already holds with its current state ("succeeded" for
	// the image it runs), so a resend only ever brings news.
	if !onlyStale {
		if str(7) == target || version == target && !slices.Contains(resendStates, state) {
			return nil
		}
	}
	now := s.now().UnixMilli()
	if onlyStale {
		last := max(atoi(str(4)), atoi(str(5)))
		if str(6) != "1" || now-last < s.cfg.ManifestResend.Milliseconds() {
			return nil
		}
	}
	f, err := s.load(ctx, target)
	if err != nil {
		return err
	}
	if err := s.rdb.HSet(ctx, s.keys.Device(dev), backend.FOTASentAt, now).Err(); err != nil {
		return backend.Unavailable("resend manifest to "+dev, err)
	}
	s.log.Debug().Str("device", dev).Str("version", target).Bool("stale", onlyStale).Msg("manifest sent again")
	return s.fleet.Send(ctx, dev, topics.KindFOTAManifest, f.body)
}

// timeoutScript ends an update that made no progress (fota_progress_at,
// else its start) since before the cutoff. KEYS: dev hash. ARGV: cutoff
// ms, started_at.
var timeoutScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'fota_active', 'fota_progress_at', 'fota_started_at')
if h[1] ~= '1' or h[3] ~= ARGV[2] then return 0 end
if tonumber(h[2] or h[3] or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'fota_active', '0', 'fota_result', 'timed_out', 'fota_reason', 'timeout',
  'fota_detail', 'no progress reported in time')
return 1
`)

// sweepUpdates times out stalled updates and resends stale manifests. The
// active devices' progress is read in one pipelined round trip; only the
// devices that look stalled or stale cost more.
func (s *Service) sweepUpdates(ctx context.Context) error {
	devs, err := s.rdb.ZRange(ctx, s.activeKey(), 0, -1).Result()
	if err != nil {
		return backend.Unavailable("fota sweep", err)
	}
	cmds := make([]*redis.SliceCmd, len(devs))
	if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, dev := range devs {
			cmds[i] = p.HMGet(ctx, s.keys.Device(dev), backend.FOTAActive, backend.FOTAStartedAt, backend.FOTATarget,
				backend.FOTARollout, backend.FOTAUpdatedAt, backend.FOTASentAt, progressAt)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return backend.Unavailable("fota sweep", err)
	}
	var errs []error
	now := s.now().UnixMilli()
	cutoff := s.now().Add(-s.cfg.UpdateTimeout).UnixMilli()
	for i, dev := range devs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h := cmds[i].Val()
		str := func(j int) string {
			if j >= len(h) {
				return ""
			}
			v, _ := h[j].(string)
			return v
		}
		if str(0) != "1" {
			s.rdb.ZRem(ctx, s.activeKey(), dev)
			continue
		}
		updated := atoi(str(4))
		progress := atoi(str(6))
		if progress == 0 {
			progress = atoi(str(1)) // started before fota_progress_at existed
		}
		if progress < cutoff {
			n, err := timeoutScript.Run(ctx, s.rdb, []string{s.keys.Device(dev)}, cutoff, str(1)).Int()
			if err != nil {
				errs = append(errs, backend.Unavailable("fota sweep "+dev, err))
				continue
			}
			if n == 1 {
				target, rollout := str(2), str(3)
				s.m.updates.WithLabelValues(ResultTimedOut).Inc()
				s.rdb.ZRem(ctx, s.activeKey(), dev)
				s.log.Warn().Str("device", dev).Str("version", target).Str("rollout", rollout).Msg("firmware update timed out")
				s.emit(ctx, dev, map[string]any{"state": ResultTimedOut, "version": target, "reason": "timeout", "rollout": rollout})
				continue
			}
		}
		if now-max(updated, atoi(str(5))) < s.cfg.ManifestResend.Milliseconds() {
			continue // resend would find it fresh
		}
		if err := s.resend(ctx, dev, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Rollback asks dev to return to its previous firmware slot (down/rollback).
// version, when set, must be the previous slot's version or the device
// refuses. The device reports the outcome as a fota_status (rolled_back,
// or failed with no_previous_slot). A device with an update in progress
// is CodeConflict.
func (s *Service) Rollback(ctx context.Context, dev, reason, version string) error {
	if len(reason) > 512 {
		return backend.Errorf(backend.CodeInvalid, "reason", "reason longer than 512 bytes")
	}
	if version != "" {
		if err := wire.ValidVersion(version); err != nil {
			return invalid("version", err, "bad version %q: %v", version, err)
		}
	}
	d, err := s.fleet.Device(ctx, dev)
	if err != nil {
		return err
	}
	if d.FOTA != nil && d.FOTA.Active {
		return backend.Errorf(backend.CodeConflict, "id", "device %s has a firmware update to %s in progress", dev, d.FOTA.Target)
	}
	if reason == "" {
		reason = "operator request"
	}
	body := wire.RollbackBody{Rollback: &wire.Rollback{Reason: reason, Version: version}}
	// The device's answer (rolled_back, or failed) is about a version the
	// backend did not offer: statusScript admits it on this mark.
	if err := s.rdb.HSet(ctx, s.keys.Device(dev), "fota_rollback_req", "1").Err(); err != nil {
		return backend.Unavailable("rollback "+dev, err)
	}
	if err := s.fleet.Send(ctx, dev, topics.KindRollback, body); err != nil {
		return fmt.Errorf("rollback %s: %w", dev, err)
	}
	s.log.Info().Str("device", dev).Str("reason", reason).Msg("rollback requested")
	s.emit(ctx, dev, map[string]any{"state": "rollback_requested", "reason": reason, "version": version})
	return nil
}

func (s *Service) emit(ctx context.Context, dev string, data map[string]any) {
	if err := s.fleet.Emit(ctx, dev, topics.EventFOTA, data); err != nil {
		s.log.Warn().Err(err).Str("device", dev).Msg("emit fota event")
	}
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
