package config

import (
	"context"
	"encoding/json"
	"github.com/ecowatt/ecowatt/backend"
	"slices"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// State is a device's configuration as the API shows it.
type State struct {
	Device  string  `json:"device"`
	Desired Desired `json:"desired"`
	// Reported is what the device says it runs (from its birth and its
	// acks); nil until it has said anything.
	Reported *Reported `json:"reported"`
	// Pending is true while the device has not acknowledged the desired
	// version.
	Pending bool     `json:"pending"`
	LastAck *LastAck `json:"last_ack"`
	// Drift lists the parameters whose reported value differs from the
	// desired one (a rejected field, or a version not yet applied).
	Drift    []string  `json:"drift"`
	Delivery *Delivery `json:"delivery,omitempty"`
}

// Desired is the desired config. Version 0 is never set by an operator and
// never sent: it is the config the device reported at birth, or the
// factory default before the device has reported one.
type Desired struct {
	topics.Config
	Version   int64      `json:"version"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
	UpdatedBy string     `json:"updated_by,omitempty"`
	Via       string     `json:"via,omitempty"`
}

// Reported is the config the device runs, with the version it last
// acknowledged.
type Reported struct {
	topics.Config
	Version int64      `json:"version"`
	At      *time.Time `json:"at,omitempty"`
}

// LastAck is the newest ack the device sent, with when it came.
type LastAck struct {
	topics.ConfigAck
	At *time.Time `json:"at,omitempty"`
}

// Delivery says when the desired version was last sent.
type Delivery struct {
	Version  int64      `json:"version"`
	SentAt   *time.Time `json:"sent_at,omitempty"`
	Attempts int64      `json:"attempts"`
}

// record is the parsed cfg hash.
type record struct {
	version     int64
	desired     topics.Config
	hasDesired  bool
	pending     bool
	reported    *topics.Config
	reportedVer int64
	lastAck     *topics.ConfigAck
	h           map[string]string
}

func parseRecord(h map[string]string) record {
	if h == nil {
		h = map[string]string{}
	}
	r := record{h: h, version: atoi(h[fVersion]), pending: h[fPending] == "1", reportedVer: atoi(h[fReportedVersion])}
	if v, ok := h[fReported]; ok {
		var c topics.Config
		if json.Unmarshal([]byte(v), &c) == nil {
			r.reported = &c
		}
	}
	// Before the first desired version, what the device reports it runs
	// is the desired config (so a partial change keeps the other fields);
	// the factory default only when it has reported nothing.
	r.desired = topics.DefaultConfig()
	if r.reported != nil {
		r.desired = r.reported.Clone()
	}
	if v, ok := h[fDesired]; ok {
		var c topics.Config
		if json.Unmarshal([]byte(v), &c) == nil {
			r.desired, r.hasDesired = c, true
		}
	}
	if v, ok := h[fLastAck]; ok {
		var a topics.ConfigAck
		if json.Unmarshal([]byte(v), &a) == nil {
			r.lastAck = &a
		}
	}
	return r
}

func (r record) state(dev string) State {
	st := State{
		Device: dev,
		Desired: Desired{Config: r.desired.Clone(), Version: r.version, UpdatedAt: msTime(r.h[fDesiredAt]),
			UpdatedBy: r.h[fDesiredBy], Via: r.h[fDesiredVia]},
		Pending: r.pending,
		Drift:   []string{},
	}
	if r.reported != nil {
		st.Reported = &Reported{Config: r.reported.Clone(), Version: r.reportedVer, At: msTime(r.h[fReportedAt])}
		st.Drift = drift(r.desired, *r.reported)
	}
	if r.lastAck != nil {
		st.LastAck = &LastAck{ConfigAck: *r.lastAck, At: msTime(r.h[fLastAckAt])}
	}
	if sv := atoi(r.h[fSentVersion]); sv > 0 {
		st.Delivery = &Delivery{Version: sv, SentAt: msTime(r.h[fSentAt]), Attempts: atoi(r.h[fSends])}
	}
	return st
}

// drift lists the parameters on which a and b differ.
func drift(a, b topics.Config) []string {
	out := []string{}
	if a.SamplingInterval != b.SamplingInterval {
		out = append(out, topics.ParamSamplingInterval)
	}
	if a.UploadInterval != b.UploadInterval {
		out = append(out, topics.ParamUploadInterval)
	}
	if !slices.Equal(a.Registers, b.Registers) {
		out = append(out, topics.ParamRegisters)
	}
	return out
}

// read returns dev's record; it fails with CodeNotFound when the device
// does not exist. c is the client or a WATCH transaction.
func (s *Service) read(ctx context.Context, c redis.Cmdable, dev string) (record, error) {
	if topics.ValidateID(dev) != nil {
		return record{}, notFound(dev)
	}
	var exists *redis.IntCmd
	var h *redis.MapStringStringCmd
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, s.keys.Device(dev))
		h = p.HGetAll(ctx, s.cfgKey(dev))
		return nil
	})
	if err != nil {
		return record{}, backend.Unavailable("read config "+dev, err)
	}
	if exists.Val() == 0 {
		return record{}, notFound(dev)
	}
	return parseRecord(h.Val()), nil
}

// Get returns dev's desired and reported config, pending flag and last ack.
func (s *Service) Get(ctx context.Context, dev string) (State, error) {
	r, err := s.read(ctx, s.rdb, dev)
	if err != nil {
		return State{}, err
	}
	return r.state(dev), nil
}

// Entry is one history entry.
type Entry struct {
	ID      string    `json:"id"`
	Type    string    `json:"type"` // EntryDesired or EntryAck
	Version int64     `json:"version"`
	At      time.Time `json:"at"`
	By      string    `json:"by,omitempty"`
	Via     string    `json:"via,omitempty"`
	// Desired versions: the changes from the previous desired config and
	// the complete new config.
	Changes []topics.FieldChange `json:"changes,omitempty"`
	Config  *topics.Config       `json:"config,omitempty"`
	// Acks: the ack and its result (one of the Ack* results).
	Ack    *topics.ConfigAck `json:"ack,omitempty"`
	Result string            `json:"result,omitempty"`
}

// History entry types.
const (
	EntryDesired = "desired"
	EntryAck     = "ack"
)

// MaxHistory is the most entries History returns.
const MaxHistory = 1000

// History returns up to limit of dev's history entries, newest first
// (limit <= 0 or above MaxHistory means MaxHistory).
func (s *Service) History(ctx context.Context, dev string, limit int) ([]Entry, error) {
	if _, err := s.read(ctx, s.rdb, dev); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > MaxHistory {
		limit = MaxHistory
	}
	msgs, err := s.rdb.XRevRangeN(ctx, s.histKey(dev), "+", "-", int64(limit)).Result()
	if err != nil {
		return nil, backend.Unavailable("config history "+dev, err)
	}
	out := make([]Entry, 0, len(msgs))
	for _, m := range msgs {
		var e Entry
		if d, ok := m.Values["data"].(string); ok {
			if err := json.Unmarshal([]byte(d), &e); err != nil {
				s.log.Warn().Err(err).Str("device", dev).Str("entry", m.ID).Msg("unreadable config history entry")
			}
		}
		e.ID = m.ID
		out = append(out, e)
	}
	return out, nil
}

// historyArgs is the XADD of one entry.
func (s *Service) historyArgs(dev string, e Entry) (*redis.XAddArgs, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return &redis.XAddArgs{
		Stream: s.histKey(dev),
		MaxLen: s.cfg.HistoryMaxLen,
		Approx: true,
		Values: []any{"type", e.Type, "version", e.Version, "data", data},
	}, nil
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func msTime(s string) *time.Time {
	ms := atoi(s)
	if ms <= 0 {
		return nil
	}
	t := time.UnixMilli(ms).UTC()
	return &t
}
