package config

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
)

// maxParamName bounds a parameter name in an ack (a device reports unknown
// fields it rejected under their own name).
const maxParamName = 64

// parseAck decodes and checks an up/config_ack body. Every error is a
// CodeInvalid *backend.Error: the backend counts it as a security event.
func parseAck(body []byte) (topics.ConfigAck, []applied, error) {
	bad := func(format string, args ...any) error {
		return backend.Errorf(backend.CodeInvalid, "", "config ack: "+format, args...)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var b topics.ConfigAckBody
	if err := dec.Decode(&b); err != nil {
		return topics.ConfigAck{}, nil, bad("malformed: %v", err)
	}
	if dec.More() {
		return topics.ConfigAck{}, nil, bad("data after the JSON object")
	}
	if b.ConfigAck == nil {
		return topics.ConfigAck{}, nil, bad(`missing "config_ack"`)
	}
	a := *b.ConfigAck
	if a.Version <= 0 {
		return topics.ConfigAck{}, nil, bad("version %d is not positive", a.Version)
	}
	seen := map[string]bool{}
	use := func(p string, known bool) error {
		switch {
		case p == "" || len(p) > maxParamName:
			return bad("parameter name %q", p)
		case known && !slices.Contains(topics.ConfigParams, p):
			return bad("unknown parameter %q", p)
		case seen[p]:
			return bad("parameter %q listed twice", p)
		}
		seen[p] = true
		return nil
	}
	var changes []applied
	for _, f := range a.Accepted {
		if err := use(f.Parameter, true); err != nil {
			return topics.ConfigAck{}, nil, err
		}
		c, err := toApplied(f)
		if err != nil {
			return topics.ConfigAck{}, nil, bad("%v", err)
		}
		changes = append(changes, c)
	}
	for _, f := range a.Rejected {
		if err := use(f.Parameter, false); err != nil {
			return topics.ConfigAck{}, nil, err
		}
	}
	for _, p := range a.Unchanged {
		if err := use(p, true); err != nil {
			return topics.ConfigAck{}, nil, err
		}
	}
	// Normalise json.Number back to plain numbers for storage and events.
	for i, c := range changes {
		a.Accepted[i].New, a.Accepted[i].Old = c.value(), plain(a.Accepted[i].Old)
	}
	if a.Accepted == nil {
		a.Accepted = []topics.FieldChange{}
	}
	if a.Rejected == nil {
		a.Rejected = []topics.FieldRejected{}
	}
	if a.Unchanged == nil {
		a.Unchanged = []string{}
	}
	return a, changes, nil
}

// applied is one accepted field's new value, typed.
type applied struct {
	param string
	n     int
	regs  []string
}

func (c applied) value() any {
	if c.param == topics.ParamRegisters {
		return c.regs
	}
	return c.n
}

func (c applied) apply(cfg *topics.Config) {
	switch c.param {
	case topics.ParamSamplingInterval:
		cfg.SamplingInterval = c.n
	case topics.ParamUploadInterval:
		cfg.UploadInterval = c.n
	default:
		cfg.Registers = slices.Clone(c.regs)
	}
}

func toApplied(f topics.FieldChange) (applied, error) {
	c := applied{param: f.Parameter}
	if f.Parameter == topics.ParamRegisters {
		list, ok := f.New.([]any)
		if !ok {
			return c, fmt.Errorf("accepted registers: new value is not a list")
		}
		c.regs = make([]string, len(list))
		for i, v := range list {
			if c.regs[i], ok = v.(string); !ok {
				return c, fmt.Errorf("accepted registers: element %d is not a string", i)
			}
		}
		return c, nil
	}
	num, ok := f.New.(json.Number)
	if !ok {
		return c, fmt.Errorf("accepted %s: new value is not a number", f.Parameter)
	}
	n, err := num.Int64()
	if err != nil || n < 0 || n > math.MaxInt32 {
		return c, fmt.Errorf("accepted %s: new value %s is not a small integer", f.Parameter, num)
	}
	c.n = int(n)
	return c, nil
}

// plain turns json.Numbers (also inside lists) into int64 or float64.
func plain(v any) any {
	switch x := v.(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		f, _ := x.Float64()
		return f
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plain(e)
		}
		return out
	}
	return v
}

// ackResult classifies an ack against the desired version.
func ackResult(a topics.ConfigAck, desired int64) string {
	switch {
	case a.Version < desired:
		return AckStale
	case a.Version > desired:
		return AckUnknown
	case len(a.Rejected) == 0:
		return AckAccepted
	case len(a.Accepted) > 0:
		return AckPartial
	}
	return AckRejected
}

// handleAck records a device's config_ack: the last ack, the config the
// device now runs (its previous reported config with the accepted fields
// applied; rejected fields keep their old value), the pending flag
// (cleared only by an ack of the desired version), a history entry and a
// config event. Acks of older versions are recorded but leave the desired
// version pending; an ack of a version above the desired one was never
// issued and is CodeInvalid (a security event), changing nothing.
func (s *Service) handleAck(ctx context.Context, dev string, m envelope.Message) error {
	ack, changes, err := parseAck(m.Body)
	if err != nil {
		return err
	}
	var (
		result, score    string
		cleared, pending bool
		dup              bool
	)
	txf := func(tx *redis.Tx) error {
		r, err := s.read(ctx, tx, dev)
		if err != nil {
			return err
		}
		if ack.Version > r.version {
			// Never issued (versions count up from 1 with every set): storing
			// it would move the reported version past every genuine ack.
			return backend.Errorf(backend.CodeInvalid, "version", "config ack for version %d, which was never issued (desired is %d)", ack.Version, r.version)
		}
		now := s.now().UTC()
		result = ackResult(ack, r.version)
		ackJSON, err := json.Marshal(ack)
		if err != nil {
			return fmt.Errorf("config ack %s: %w", dev, err)
		}
		dup = r.lastAck != nil && r.h[fLastAck] == string(ackJSON)
		fields := []any{}
		// An ack older than the reported version (a late redelivery, or
		// two replicas handling acks out of order) must not roll the
		// reported config back.
		if ack.Version >= r.reportedVer && (r.reported != nil || len(changes) > 0) {
			// Unknown before: the device started from the factory config.
			rep := topics.DefaultConfig()
			if r.reported != nil {
				rep = r.reported.Clone()
			}
			for _, c := range changes {
				c.apply(&rep)
			}
			repJSON, err := json.Marshal(rep)
			if err != nil {
				return fmt.Errorf("config ack %s: %w", dev, err)
			}
			fields = append(fields, fReported, repJSON, fReportedAt, now.UnixMilli())
		}
		if ack.Version >= r.reportedVer {
			fields = append(fields, fReportedVersion, ack.Version)
		}
		if r.lastAck == nil || ack.Version >= r.lastAck.Version {
			fields = append(fields, fLastAck, ackJSON, fLastAckAt, now.UnixMilli())
		}
		pending = r.pending
		if ack.Version == r.version && r.pending {
			fields = append(fields, fPending, "0")
			cleared, pending, score = true, false, r.h[fDesiredAt]
		}
		hist, err := s.historyArgs(dev, Entry{Type: EntryAck, Version: ack.Version, At: now, Ack: &ack, Result: result})
		if err != nil {
			return fmt.Errorf("config ack %s: %w", dev, err)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			if len(fields) > 0 {
				p.HSet(ctx, s.cfgKey(dev), fields...)
			}
			if ack.Version >= r.reportedVer {
				// The device record shows the acknowledged version at once,
				// not only from the next birth.
				p.HSet(ctx, s.keys.Device(dev), backend.FieldConfigVersion, ack.Version)
			}
			p.XAdd(ctx, hist)
			return nil
		})
		return err
	}
	if err := s.watch(ctx, txf, s.keys.Device(dev), s.cfgKey(dev)); err != nil {
		if backend.ErrorCode(err) == backend.CodeInvalid {
			s.m.acks.WithLabelValues(AckUnknown).Inc()
			return err
		}
		return backend.Unavailable("config ack "+dev, err)
	}
	s.m.acks.WithLabelValues(result).Inc()
	if cleared {
		s.unpend(ctx, dev, score)
	}
	s.log.Info().Str("device", dev).Int64("version", ack.Version).Str("result", result).
		Int("accepted", len(ack.Accepted)).Int("rejected", len(ack.Rejected)).Bool("duplicate", dup).
		Bool("pending", pending).Msg("config ack")
	return s.b.Emit(ctx, dev, topics.EventConfig, map[string]any{
		"status": "acked", "version": ack.Version, "result": result, "duplicate": dup, "pending": pending,
		"accepted": ack.Accepted, "rejected": ack.Rejected, "unchanged": ack.Unchanged,
	})
}
