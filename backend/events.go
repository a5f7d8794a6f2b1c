package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// Event is one audit event, as stored, published on
// ecowatt/v1/events/{device}/{kind} (or, about an operator account,
// ecowatt/v1/events/operators/{name}/security) and streamed to
// SubscribeEvents. Exactly one of Device and Operator is set.
type Event struct {
	ID       string    `json:"id,omitempty"` // audit stream entry; empty when the device is unknown
	Device   string    `json:"device,omitempty"`
	Operator string    `json:"operator,omitempty"`
	Kind     string    `json:"kind"` // topics.Event*
	At       time.Time `json:"at"`
	// By is the operator whose request caused the event (WithOperator);
	// empty for what devices and the backend do on their own.
	By   string          `json:"by,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
}

type operatorKey struct{}

// WithOperator returns ctx carrying the name of the operator on whose
// behalf it runs: the HTTP API sets it for every authenticated request, so
// that Emit records who caused each event.
func WithOperator(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, operatorKey{}, name)
}

// OperatorFrom returns the operator WithOperator put in ctx, or "".
func OperatorFrom(ctx context.Context) string {
	name, _ := ctx.Value(operatorKey{}).(string)
	return name
}

// auditScript appends to a device's audit stream only when the device
// exists, so events about unknown devices create no keys.
// KEYS: dev hash, audit stream. ARGV: maxlen, kind, at (unix ms), data, by.
var auditScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[5] == '' then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[2], 'at', ARGV[3], 'data', ARGV[4])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[2], 'at', ARGV[3], 'data', ARGV[4], 'by', ARGV[5])
`)

// Emit records an audit event for dev: it appends it to the device's audit
// stream (capped; only when the device exists), publishes it as JSON at
// QoS 1 on topics.Event(dev, kind), and fans it out to SubscribeEvents.
// The operator in ctx (WithOperator), if any, becomes the event's By.
func (s *Service) Emit(ctx context.Context, dev, kind string, data any) error {
	topic := topics.Event(dev, kind)
	if _, err := topics.Parse(topic); err != nil {
		return &Error{Code: CodeInvalid, Message: "bad event device or kind", Err: err}
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("emit %s %s: %w", dev, kind, err)
	}
	ev := Event{Device: dev, Kind: kind, At: s.now().UTC(), Data: raw, By: OperatorFrom(ctx)}
	id, err := auditScript.Run(ctx, s.rdb, []string{s.keys.Device(dev), s.keys.Audit(dev)},
		s.cfg.AuditMaxLen, kind, ev.At.UnixMilli(), raw, ev.By).Text()
	if err != nil && err != redis.Nil {
		return fmt.Errorf("emit %s %s: audit: %w", dev, kind, err)
	}
	ev.ID = id
	return s.publishEvent(ctx, ev)
}

// PublishEvent is publishEvent for another package whose own script
// appended the event to the device's audit stream (Keys.Audit, capped at
// AuditMaxLen), so that the change and its record are one atomic write.
func (s *Service) PublishEvent(ctx context.Context, ev Event) error { return s.publishEvent(ctx, ev) }

// AuditMaxLen is the approximate cap of each device's audit stream, for a
// script that appends to it itself (PublishEvent).
func (s *Service) AuditMaxLen() int64 { return s.cfg.AuditMaxLen }

// publishEvent is Emit after the audit append: a caller whose own script
// appended the event (so that the change and its record are atomic)
// publishes it here.
func (s *Service) publishEvent(ctx context.Context, ev Event) error {
	s.hub.publish(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("emit %s %s: %w", ev.Device, ev.Kind, err)
	}
	if err := s.bus.Publish(ctx, topics.Event(ev.Device, ev.Kind), b, 1); err != nil {
		return fmt.Errorf("emit %s %s: publish: %w", ev.Device, ev.Kind, err)
	}
	return nil
}

// Events returns up to count of dev's most recent audit events, newest first.
func (s *Service) Events(ctx context.Context, dev string, count int64) ([]Event, error) {
	if _, err := s.Device(ctx, dev); err != nil {
		return nil, err
	}
	msgs, err := s.rdb.XRevRangeN(ctx, s.keys.Audit(dev), "+", "-", count).Result()
	if err != nil {
		return nil, Unavailable("events "+dev, err)
	}
	out := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		ev := Event{ID: m.ID, Device: dev}
		ev.Kind, _ = m.Values["kind"].(string)
		ev.By, _ = m.Values["by"].(string)
		if at, ok := m.Values["at"].(string); ok {
			if t := msTime(at); t != nil {
				ev.At = *t
			}
		}
		if d, ok := m.Values["data"].(string); ok && json.Valid([]byte(d)) {
			ev.Data = json.RawMessage(d)
		}
		out = append(out, ev)
	}
	return out, nil
}

// SecurityEvent records a rejected message or connection: it counts it in
// ecowatt_security_rejections_total{reason}, logs it, appends it to the
// fleet-wide security stream and emits a security event for dev (audit
// stream only when dev exists). It changes no other state. dev may be
// empty or invalid when the offender is not a known device.
func (s *Service) SecurityEvent(ctx context.Context, dev, reason, detail string) {
	s.m.rejections.WithLabelValues(reason).Inc()
	s.securityRecord(ctx, dev, reason, detail, map[string]any{"reason": reason, "detail": detail})
}

// securityRecord logs a security event and writes it to the security
// stream and dev's audit stream.
func (s *Service) securityRecord(ctx context.Context, dev, reason, detail string, data map[string]any) {
	s.log.Warn().Str("device", dev).Str("reason", reason).Str("detail", detail).Any("data", data).Msg("security rejection")
	now := s.now().UTC()
	err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.keys.Security(),
		MaxLen: s.cfg.SecurityMaxLen,
		Approx: true,
		Values: []any{"device", dev, "reason", reason, "detail", detail, "at", now.UnixMilli()},
	}).Err()
	if err != nil {
		s.log.Error().Err(err).Msg("security stream append")
	}
	if topics.ValidateID(dev) != nil {
		raw, _ := json.Marshal(data)
		s.hub.publish(Event{Device: dev, Kind: topics.EventSecurity, At: now, Data: raw})
		return
	}
	if err := s.Emit(ctx, dev, topics.EventSecurity, data); err != nil {
		s.log.Error().Err(err).Str("device", dev).Msg("emit security event")
	}
}

// OperatorSecurityEvent records a refused login or publish of a known
// operator account: counted like SecurityEvent, appended to the fleet-wide
// security stream with an "operator" field, and published on
// topics.OperatorEvent(name, security), never in the device namespace (an
// operator may share its name with a device).
func (s *Service) OperatorSecurityEvent(ctx context.Context, name, reason, detail string) {
	s.m.rejections.WithLabelValues(reason).Inc()
	s.log.Warn().Str("operator", name).Str("reason", reason).Str("detail", detail).Msg("security rejection")
	now := s.now().UTC()
	err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.keys.Security(),
		MaxLen: s.cfg.SecurityMaxLen,
		Approx: true,
		Values: []any{"operator", name, "reason", reason, "detail", detail, "at", now.UnixMilli()},
	}).Err()
	if err != nil {
		s.log.Error().Err(err).Msg("security stream append")
	}
	raw, _ := json.Marshal(map[string]string{"reason": reason, "detail": detail})
	ev := Event{Operator: name, Kind: topics.EventSecurity, At: now, Data: raw}
	s.hub.publish(ev)
	if topics.ValidateID(name) != nil {
		return // no topic can carry it
	}
	b, _ := json.Marshal(ev)
	if err := s.bus.Publish(ctx, topics.OperatorEvent(name, topics.EventSecurity), b, 1); err != nil {
		s.log.Error().Err(err).Str("operator", name).Msg("emit operator security event")
	}
}

// EventFilter selects events; empty fields match everything.
type EventFilter struct {
	Device string
	Kind   string
}

func (f EventFilter) match(ev Event) bool {
	return (f.Device == "" || f.Device == ev.Device) && (f.Kind == "" || f.Kind == ev.Kind)
}

// SubscribeEvents returns a channel of the events this process emits that
// match f, and a cancel function (safe to call twice) that closes it. A
// subscriber that falls behind by more than 256 events loses the newest
// ones (counted in ecowatt_events_dropped_total); the audit stream keeps
// them. Events emitted by other replicas are seen only in replica mode
// (DeliverEvent); otherwise subscribe to ecowatt/v1/events/# on the broker.
func (s *Service) SubscribeEvents(f EventFilter) (<-chan Event, func()) {
	return s.hub.subscribe(f, s.m.eventsDropped.Inc)
}

// DeliverEvent hands SubscribeEvents an event another replica emitted:
// payload is the JSON it published on the events topic (replica mode,
// backend/route). The audit stream already holds it.
func (s *Service) DeliverEvent(payload []byte) error {
	var ev Event
	if err := json.Unmarshal(payload, &ev); err != nil {
		return fmt.Errorf("deliver event: %w", err)
	}
	if (ev.Device == "") == (ev.Operator == "") || ev.Kind == "" {
		return fmt.Errorf("deliver event: want a kind and one of device or operator")
	}
	s.hub.publish(ev)
	return nil
}

// hub fans events out to in-process subscribers.
type hub struct {
	mu   sync.Mutex // guards subs
	subs map[*subscriber]struct{}
}

type subscriber struct {
	f       EventFilter
	ch      chan Event
	dropped func()
}

func newHub() *hub { return &hub{subs: make(map[*subscriber]struct{})} }

func (h *hub) subscribe(f EventFilter, dropped func()) (<-chan Event, func()) {
	sub := &subscriber{f: f, ch: make(chan Event, 256), dropped: dropped}
	h.mu.Lock()
	h.subs[sub] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, sub)
			close(sub.ch)
			h.mu.Unlock()
		})
	}
}

func (h *hub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		if !sub.f.match(ev) {
			continue
		}
		select {
		case sub.ch <- ev:
		default:
			sub.dropped()
		}
	}
}
