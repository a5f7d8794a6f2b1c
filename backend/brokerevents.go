package backend

import (
	"context"
	"sync"
	"time"
)

// Reasons the broker reports through BrokerRejection (the values of
// broker.Reasons(); the backend does not import the broker, and
// cmd/ecowatt's tests check the two lists match). They are reason labels
// of ecowatt_security_rejections_total like the backend's own.
var brokerReasons = []string{
	"unknown_device", "bad_password", "expired_password", "bad_client_id", "auth_error",
	"acl_publish", "acl_subscribe", "acl_will", "acl_retain", "packet_too_large",
	"slow_consumer", "throttled", "too_many_subscriptions", "filter_too_long", "session_takeover",
	"disabled", "decommissioned",
}

// SecurityReasons returns every reason label of
// ecowatt_security_rejections_total: the backend's and the broker's.
func SecurityReasons() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range append(append([]string(nil), allReasons...), brokerReasons...) {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// Broker rejections are sampled: at most one security event per account
// name per brokerSampleEvery, and at most brokerSamplesPerWindow events
// fleet-wide in that time (made-up usernames are endless), each carrying
// the count, by reason, of the rejections since the name's previous one.
const (
	brokerSampleEvery      = time.Minute
	brokerSamplesPerWindow = 600
	brokerSampleNames      = 1 << 16 // names tracked; beyond, stale ones are dropped
)

// BrokerRejection records a rejection the broker reported for account
// name: a device ID, an operator, or whatever an unauthenticated client
// sent as username. Every one counts in ecowatt_security_rejections_total;
// only a sample becomes a security event (log, security stream, the
// device's audit stream), so that a flood of refused logins cannot push
// a device's real history out of its capped audit stream. The others count
// in ecowatt_security_events_suppressed_total and in the next sample's
// "count" and "counts".
func (s *Service) BrokerRejection(ctx context.Context, name, reason, detail string) {
	s.m.rejections.WithLabelValues(reason).Inc()
	counts, ok := s.brokerSamples.add(name, reason, s.now())
	if !ok {
		s.m.suppressed.Inc()
		return
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	s.securityRecord(ctx, name, reason, detail,
		map[string]any{"reason": reason, "detail": detail, "count": total, "counts": counts})
}

// sampler decides which rejections become events.
type sampler struct {
	every     time.Duration
	perWindow int
	maxNames  int

	mu     sync.Mutex // guards the fields below
	names  map[string]*pendingSample
	window time.Time // start of the fleet-wide window
	used   int       // events in it
}

type pendingSample struct {
	next   time.Time        // no event for this name before
	counts map[string]int64 // rejections by reason since the last event
}

func newSampler(every time.Duration, perWindow, maxNames int) *sampler {
	return &sampler{every: every, perWindow: perWindow, maxNames: maxNames, names: map[string]*pendingSample{}}
}

// add counts a rejection of name for reason at now and reports whether it
// becomes an event, with the counts it stands for.
func (p *sampler) add(name, reason string, now time.Time) (map[string]int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps, ok := p.names[name]
	if !ok {
		if len(p.names) >= p.maxNames {
			for k, v := range p.names {
				if !now.Before(v.next) {
					delete(p.names, k)
				}
			}
		}
		if len(p.names) >= p.maxNames {
			return nil, false // still counted in the metric
		}
		ps = &pendingSample{counts: map[string]int64{}}
		p.names[name] = ps
	}
	ps.counts[reason]++
	if now.Before(ps.next) {
		return nil, false
	}
	if now.Sub(p.window) >= p.every {
		p.window, p.used = now, 0
	}
	if p.used >= p.perWindow {
		return nil, false
	}
	p.used++
	counts := ps.counts
	ps.counts = map[string]int64{}
	ps.next = now.Add(p.every)
	return counts, true
}
