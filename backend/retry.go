package backend

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Uplinks that meet a store outage.
//
// The broker acknowledges a device's QoS 1 publish before the backend has
// processed it, so a message whose key lookup, replay check or handler
// fails on Redis would be lost. Instead the shard's worker keeps it, in
// order, and tries again with backoff (50 ms doubling to 2 s) until it
// succeeds or has waited RetryFor (default 2 min). While a shard has
// messages waiting, new ones queue behind them (a device's messages stay in
// order); when RetryQueue messages or RetryBytes wait, the worker stops
// reading its queue, which then fills and blocks the publishing
// connections: backpressure, nothing dropped. A retry resumes where the
// message failed: once its nonce is accepted, only the handlers that have
// not yet succeeded run again. A security refusal is never retried.
//
// Drops are counted in ecowatt_uplinks_dropped_total{kind,reason}:
// store_unavailable (waited RetryFor), error (a store or handler error that
// is not transient), shutdown (still waiting, or arriving, when Run ended).

// Drop reasons of ecowatt_uplinks_dropped_total.
const (
	DropStoreUnavailable = "store_unavailable"
	DropError            = "error"
	DropShutdown         = "shutdown"
)

const (
	retryMinBackoff = 50 * time.Millisecond
	retryMaxBackoff = 2 * time.Second
)

// transient reports whether err is a store failure worth waiting out:
// Redis unreachable, timing out, loading or failing over.
func transient(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	switch {
	case ErrorCode(err) == CodeUnavailable,
		errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrClosed):
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		for _, p := range []string{"LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "BUSY"} {
			if strings.HasPrefix(re.Error(), p) {
				return true
			}
		}
	}
	return false
}

// retryQueue is one worker's messages waiting for the store, oldest first.
// Only its worker touches it.
type retryQueue struct {
	jobs    []job
	bytes   int
	backoff time.Duration
	gauge   prometheus.Gauge // ecowatt_uplinks_retrying, shared by the workers
}

func (r *retryQueue) push(j job) {
	r.jobs = append(r.jobs, j)
	r.bytes += len(j.msg.Payload)
	r.gauge.Inc()
	if r.backoff == 0 {
		r.backoff = retryMinBackoff
	}
}

func (r *retryQueue) pop() {
	r.bytes -= len(r.jobs[0].msg.Payload)
	r.gauge.Dec()
	r.jobs[0] = job{}
	r.jobs = r.jobs[1:]
	if len(r.jobs) == 0 {
		r.jobs, r.backoff = nil, 0
	}
}

// full reports whether the worker should stop reading its queue.
func (s *Service) retryFull(r *retryQueue) bool {
	return len(r.jobs) >= s.cfg.RetryQueue || r.bytes >= s.cfg.RetryBytes
}

// worker processes q's messages in order, holding back those that failed
// on the store (see the top of this file).
func (s *Service) worker(ctx context.Context, q <-chan job) {
	r := retryQueue{gauge: s.m.uplinkRetrying}
	defer func() {
		for len(r.jobs) > 0 {
			s.dropUplink(r.jobs[0], DropShutdown, r.jobs[0].lastErr)
			r.pop()
		}
	}()
	for {
		if len(r.jobs) == 0 {
			select {
			case <-ctx.Done():
				return
			case j := <-q:
				if s.process(ctx, &j) {
					s.hold(&r, j)
				}
			}
			continue
		}
		in := q
		if s.retryFull(&r) {
			in = nil
		}
		t := time.NewTimer(r.backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case j := <-in:
			t.Stop()
			r.push(j)
		case <-t.C:
			s.drain(ctx, &r)
		}
	}
}

// hold keeps j for a retry, the first of a new outage for this worker.
func (s *Service) hold(r *retryQueue, j job) {
	if j.since.IsZero() {
		j.since = s.now()
	}
	r.push(j)
}

// drain retries r's messages in order until one fails again, which
// doubles the backoff, or r is empty.
func (s *Service) drain(ctx context.Context, r *retryQueue) {
	for len(r.jobs) > 0 && ctx.Err() == nil {
		j := &r.jobs[0]
		if j.since.IsZero() { // queued behind the outage, not yet tried
			j.since = s.now()
		}
		if !s.process(ctx, j) {
			r.pop()
			r.backoff = retryMinBackoff
			continue
		}
		if s.now().Sub(j.since) >= s.cfg.RetryFor {
			s.dropUplink(*j, DropStoreUnavailable, j.lastErr)
			r.pop()
			continue
		}
		r.backoff = min(2*r.backoff, retryMaxBackoff)
		return
	}
}

// dropUplink counts and logs a message given up.
func (s *Service) dropUplink(j job, reason string, err error) {
	kind := kindOf(j.msg.Topic)
	s.m.uplinkDropped.WithLabelValues(kind, reason).Inc()
	s.log.Error().Err(err).Str("device", deviceOf(j.msg.Topic)).Str("kind", kind).Str("reason", reason).
		Msg("uplink dropped")
}

// kindOf returns the last level of a topic.
func kindOf(topic string) string {
	return topic[strings.LastIndexByte(topic, '/')+1:]
}
