package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// LabelChange is the result of PatchLabels.
type LabelChange struct {
	ID      string            `json:"id"`
	Labels  map[string]string `json:"labels"`
	Changed bool              `json:"changed"`
}

// labelsScript replaces a device's labels if they are still what the
// caller read (check-and-set), and appends the audit event in the same
// step, so a change is never without its record.
// KEYS: dev hash, audit stream. ARGV: old labels JSON ("" = none), new
// labels JSON ("" = none), audit maxlen, at (unix ms), event data, by
// (the event's operator, as Emit writes it; "" = none).
// Returns false for no device, -1 for a decommissioned one, 0 when the
// labels moved meanwhile, else the audit entry ID.
var labelsScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'state') == 'decommissioned' then return -1 end
local cur = redis.call('HGET', KEYS[1], 'labels') or ''
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'labels') else redis.call('HSET', KEYS[1], 'labels', ARGV[2]) end
if ARGV[6] == '' then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'labels', 'at', ARGV[4], 'data', ARGV[5])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'labels', 'at', ARGV[4], 'data', ARGV[5], 'by', ARGV[6])
`)

// PatchLabels applies a JSON merge patch to device id's labels (a nil
// value deletes the key) on behalf of operator by, and records the change
// as a labels audit event. Bad keys or values, or more than
// selector.MaxLabels labels after the patch, are CodeInvalid naming the
// label; an unknown device is CodeNotFound, a decommissioned one
// CodeConflict. Either way nothing changes. A patch that changes nothing
// records nothing.
func (s *Service) PatchLabels(ctx context.Context, id string, patch map[string]*string, by string) (LabelChange, error) {
	if topics.ValidateID(id) != nil {
		return LabelChange{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	for range 10 { // retries only when another writer changed the labels between read and write
		raw, err := s.rdb.HGet(ctx, s.keys.Device(id), fLabels).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return LabelChange{}, Unavailable("labels "+id, err)
		}
		old := decodeLabels(raw)
		next, changed, err := selector.Patch(old, patch)
		if err != nil {
			return LabelChange{}, labelError(err)
		}
		if !changed {
			if _, err := s.Device(ctx, id); err != nil {
				return LabelChange{}, err
			}
			return LabelChange{ID: id, Labels: old, Changed: false}, nil
		}
		nextJSON, err := encodeLabels(next)
		if err != nil {
			return LabelChange{}, err
		}
		now := s.now().UTC()
		data, err := json.Marshal(map[string]any{"labels": next, "changed": labelDiff(old, next), "via": "patch", "by": by})
		if err != nil {
			return LabelChange{}, fmt.Errorf("labels %s: %w", id, err)
		}
		res, err := labelsScript.Run(ctx, s.rdb, []string{s.keys.Device(id), s.keys.Audit(id)},
			raw, nextJSON, s.cfg.AuditMaxLen, now.UnixMilli(), data, by).Result()
		if errors.Is(err, redis.Nil) {
			return LabelChange{}, Errorf(CodeNotFound, "id", "no device %q", id)
		}
		if err != nil {
			return LabelChange{}, Unavailable("labels "+id, err)
		}
		if n, ok := res.(int64); ok && n == -1 {
			return LabelChange{}, &Error{Code: CodeConflict, Field: "id", Err: ErrDecommissioned,
				Message: "device " + id + " is decommissioned"}
		}
		evID, ok := res.(string)
		if !ok {
			continue // moved meanwhile: read again
		}
		if err := s.indexLabels(ctx, id, old, next); err != nil {
			// The change stands; RepairIndexes puts the index right.
			s.log.Error().Err(err).Str("device", id).Msg("label index update failed")
		}
		s.log.Info().Str("device", id).Str("by", by).Interface("labels", next).Msg("labels changed")
		if err := s.publishEvent(ctx, Event{ID: evID, Device: id, Kind: topics.EventLabels, At: now, By: by, Data: data}); err != nil {
			s.log.Error().Err(err).Str("device", id).Msg("publish labels event")
		}
		return LabelChange{ID: id, Labels: next, Changed: true}, nil
	}
	return LabelChange{}, Errorf(CodeConflict, "labels", "labels of %s changed concurrently too often; try again", id)
}

// labelDiff is the merge patch that turns a into b: changed and new keys
// with their values, removed keys with null.
func labelDiff(a, b map[string]string) map[string]*string {
	d := map[string]*string{}
	for k, v := range b {
		if old, ok := a[k]; !ok || old != v {
			d[k] = &v
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			d[k] = nil
		}
	}
	return d
}

// encodeLabels validates labels and returns them as stored: a JSON object,
// or "" for none.
func encodeLabels(l map[string]string) (string, error) {
	if err := selector.ValidateLabels(l); err != nil {
		return "", labelError(err)
	}
	if len(l) == 0 {
		return "", nil
	}
	b, err := json.Marshal(l) // sorted keys: equal sets encode equally
	if err != nil {
		return "", fmt.Errorf("encode labels: %w", err)
	}
	return string(b), nil
}

// decodeLabels reads stored labels; never nil.
func decodeLabels(s string) map[string]string {
	l := map[string]string{}
	if s != "" {
		_ = json.Unmarshal([]byte(s), &l)
	}
	return maps.Clone(l)
}

func labelError(err error) error {
	var le *selector.LabelError
	if errors.As(err, &le) {
		return &Error{Code: CodeInvalid, Field: le.Field, Message: le.Reason, Err: err}
	}
	return err
}
