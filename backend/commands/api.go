package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// Parse parses and validates an operator's command document (see
// topics.ParseOpsCommand); errors are CodeInvalid and count as rejected.
func (s *Service) Parse(body []byte) (topics.OpsCommand, error) {
	c, err := topics.ParseOpsCommand(body)
	if err != nil {
		s.m.total.WithLabelValues("rejected").Inc()
		return topics.OpsCommand{}, backend.Invalid(err)
	}
	return c, nil
}

// Submit validates c and queues it for device dev. created is false when
// c.RequestID names a command already submitted for dev, which is then
// returned unchanged (idempotent submission). An invalid command is
// CodeInvalid and an unknown device CodeNotFound; neither changes state.
func (s *Service) Submit(ctx context.Context, dev, operator string, c topics.OpsCommand) (cmd Command, created bool, err error) {
	if err := topics.ValidateCommand(c); err != nil {
		s.m.total.WithLabelValues("rejected").Inc()
		return Command{}, false, backend.Invalid(err)
	}
	if topics.ValidateID(dev) != nil {
		s.m.total.WithLabelValues("rejected").Inc()
		return Command{}, false, backend.Errorf(backend.CodeNotFound, "id", "no device %q", dev)
	}
	cid, err := s.newID()
	if err != nil {
		return Command{}, false, err
	}
	now := s.now()
	ttl := c.EffectiveTTL()
	fields := []any{
		fID, cid, fDevice, dev, fAction, c.Action, fState, StateQueued, fAttempts, 0,
		fCreatedAt, now.UnixMilli(), fExpiresAt, now.Add(ttl).UnixMilli(),
	}
	if c.TargetRegister != "" {
		fields = append(fields, fTarget, c.TargetRegister)
	}
	if c.Value != nil {
		fields = append(fields, fValue, *c.Value)
	}
	if c.RequestID != "" {
		fields = append(fields, fRequestID, c.RequestID)
	}
	if operator != "" {
		fields = append(fields, fOperator, operator)
	}
	k := s.devKeys(dev)
	reqKey, hasReq := k.seq, "0" // any key of the device's slot when unused
	if c.RequestID != "" {
		reqKey, hasReq = s.reqKey(dev, c.RequestID), "1"
	}
	life := ttl + s.cfg.ResultTimeout + s.cfg.Retention
	// The fleet-wide ID index is another Cluster slot than the device's
	// records, so one script cannot write both. It is written first: a
	// crash after it leaves an index entry for a command that never
	// existed (GET answers 404, as it should, until it expires), where the
	// other order left an accepted command that GET and DELETE could never
	// find.
	if err := s.rdb.Set(ctx, s.indexKey(cid), dev, life).Err(); err != nil {
		return Command{}, false, backend.Unavailable("queue command for "+dev+": index", err)
	}
	by := backend.OperatorFrom(ctx)
	args := append([]any{cid, hasReq, s.cfg.MaxHistory, life.Milliseconds(), s.fleet.AuditMaxLen(), by}, fields...)
	res, err := enqueueScript.Run(ctx, s.rdb,
		[]string{k.dev, s.cmdKey(dev, cid), k.active, k.history, k.seq, reqKey, s.keys.Audit(dev)}, args...).Slice()
	if err != nil {
		return Command{}, false, backend.Unavailable("queue command for "+dev, err)
	}
	code, _ := res[0].(int64)
	val, _ := res[1].(string)
	if code == 1 && testCrashAfterEnqueue.Load() {
		return Command{}, false, errTestCrash
	}
	if code != 1 {
		// Nothing was queued under cid. An existing request's command
		// gets its index back if a crash of an older version lost it.
		pipe := s.rdb.Pipeline()
		pipe.Del(ctx, s.indexKey(cid))
		if code == 2 {
			pipe.SetNX(ctx, s.indexKey(val), dev, life)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return Command{}, false, backend.Unavailable("queue command for "+dev+": index", err)
		}
	}
	switch code {
	case 0:
		s.m.total.WithLabelValues("rejected").Inc()
		return Command{}, false, backend.Errorf(backend.CodeNotFound, "id", "no device %q", dev)
	case 3:
		s.m.total.WithLabelValues("rejected").Inc()
		return Command{}, false, backend.Errorf(backend.CodeConflict, "id", "device %s is decommissioned", dev)
	case 2:
		cmd, err := s.load(ctx, dev, val)
		if backend.ErrorCode(err) == backend.CodeNotFound {
			return Command{}, false, backend.Errorf(backend.CodeConflict, "request_id", "request_id %q was used for command %s, which is no longer kept", c.RequestID, val)
		}
		return cmd, false, err
	}
	// cmdactive is another slot too, written after the device's.
	if err := s.rdb.ZAdd(ctx, s.activeDevices(), redis.Z{Member: dev}).Err(); err != nil {
		// The sweep cannot find the device without cmdactive: say so;
		// the command is queued and the next submit or birth repairs it.
		s.log.Error().Err(err).Str("device", dev).Str("command", cid).Msg("command index cmdactive not written")
	}
	s.m.total.WithLabelValues(StateQueued).Inc()
	// The command is what the script wrote: no need to read it back.
	h := make(map[string]string, len(fields)/2+1)
	for i := 0; i+1 < len(fields); i += 2 {
		h[fields[i].(string)] = fmt.Sprint(fields[i+1])
	}
	h[fSeq] = val
	cmd = parse(h)
	s.log.Info().Str("device", dev).Str("command", cid).Str("action", c.Action).Str("operator", operator).Msg("command queued")
	if len(res) >= 4 { // the script appended the event
		id, _ := res[2].(string)
		data, _ := res[3].(string)
		s.publish(ctx, backend.Event{ID: id, Device: dev, Kind: topics.EventCommand, At: now.UTC(), By: by, Data: json.RawMessage(data)}, cid)
	}
	s.kick(ctx, dev, false)
	return cmd, true, nil
}

// testCrashAfterEnqueue, set by tests, makes Submit stop dead right after
// the device's records are written, as a kill -9 there would.
var testCrashAfterEnqueue atomic.Bool

var errTestCrash = errors.New("test: crash after enqueue")

// newID returns a fresh command ID (a ULID: sortable by creation time).
func (s *Service) newID() (string, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	id, err := ulid.New(ulid.Timestamp(s.now()), s.random)
	if err != nil {
		return "", &backend.Error{Code: backend.CodeInternal, Message: "no command id", Err: err}
	}
	return id.String(), nil
}

// deviceOf finds the device of command cid through the fleet-wide index.
func (s *Service) deviceOf(ctx context.Context, cid string) (string, error) {
	if len(cid) != ulid.EncodedSize {
		return "", backend.Errorf(backend.CodeNotFound, "id", "no command %q", cid)
	}
	dev, err := s.rdb.Get(ctx, s.indexKey(cid)).Result()
	if err == redis.Nil {
		return "", backend.Errorf(backend.CodeNotFound, "id", "no command %q", cid)
	}
	if err != nil {
		return "", backend.Unavailable("find command "+cid, err)
	}
	return dev, nil
}

// Get returns command cid. An unknown one is CodeNotFound.
func (s *Service) Get(ctx context.Context, cid string) (Command, error) {
	dev, err := s.deviceOf(ctx, cid)
	if err != nil {
		return Command{}, err
	}
	return s.load(ctx, dev, cid)
}

// Cancel cancels command cid while it is queued; in any other state it is
// CodeConflict, and an unknown command CodeNotFound.
func (s *Service) Cancel(ctx context.Context, cid string) (Command, error) {
	dev, err := s.deviceOf(ctx, cid)
	if err != nil {
		return Command{}, err
	}
	cmd, cur, ok, err := s.transition(ctx, dev, cid, []string{StateQueued}, StateCancelled, nil)
	if err != nil {
		return Command{}, err
	}
	if !ok {
		return Command{}, backend.Errorf(backend.CodeConflict, "state", "command %s is %s; only a queued command can be cancelled", cid, cur)
	}
	return cmd, nil
}

// Page is one page of a device's command history, newest first. Next,
// when set, is the Before of the following page.
type Page struct {
	Commands []Command `json:"commands"`
	Next     string    `json:"next,omitempty"`
}

// List returns up to limit commands of dev, newest first, older than the
// command before (when set). limit 0 means DefaultPageSize.
func (s *Service) List(ctx context.Context, dev string, limit int, before string) (Page, error) {
	if limit == 0 {
		limit = DefaultPageSize
	}
	if limit < 0 || limit > MaxPageSize {
		return Page{}, backend.Errorf(backend.CodeInvalid, "limit", "limit must be 1-%d", MaxPageSize)
	}
	if _, err := s.fleet.Device(ctx, dev); err != nil {
		return Page{}, err
	}
	k := s.devKeys(dev)
	max := "+inf"
	if before != "" {
		seq, err := s.rdb.ZScore(ctx, k.history, before).Result()
		if err == redis.Nil {
			return Page{}, backend.Errorf(backend.CodeInvalid, "before", "no command %q in the history of %s", before, dev)
		}
		if err != nil {
			return Page{}, backend.Unavailable("list commands of "+dev, err)
		}
		max = "(" + strconv.FormatInt(int64(seq), 10)
	}
	cids, err := s.rdb.ZRevRangeByScore(ctx, k.history, &redis.ZRangeBy{Max: max, Min: "-inf", Count: int64(limit + 1)}).Result()
	if err != nil {
		return Page{}, backend.Unavailable("list commands of "+dev, err)
	}
	page := Page{Commands: []Command{}}
	if len(cids) > limit {
		cids = cids[:limit]
		page.Next = cids[limit-1]
	}
	cmds, gone, err := s.loadMany(ctx, dev, cids)
	if err != nil {
		return Page{}, err
	}
	// Past retention: forget them (but keep the cursor). A page may then
	// come out short.
	gone = slices.DeleteFunc(gone, func(cid string) bool { return cid == page.Next })
	if len(gone) > 0 {
		s.rdb.ZRem(ctx, k.history, toAny(gone)...)
	}
	page.Commands = append(page.Commands, cmds...)
	return page, nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// HandleOps queues a command an operator (an admin: backend.Service
// checks the role) published on ecowatt/v1/ops/{dev}/command. A refused
// command is not queued; backend.Service turns the error into a rejection
// event on ecowatt/v1/events/{dev}/command, with the request_id when one
// can be read, so that a script can match it.
func (s *Service) HandleOps(ctx context.Context, dev, operator string, body []byte) error {
	c, err := s.Parse(body)
	if err != nil {
		return err
	}
	_, _, err = s.Submit(ctx, dev, operator, c)
	return err
}
