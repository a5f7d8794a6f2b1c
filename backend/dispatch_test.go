package backend

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDispatchRunsEveryHandler: a failing handler in the middle (a Redis
// hiccup, or a bad body) does not hide the message from the handlers after
// it; the failure is still counted.
func TestDispatchRunsEveryHandler(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	cases := []struct {
		name     string
		err      error
		failures float64 // ecowatt_uplink_handler_errors_total added
		invalid  float64 // invalid_body rejections added
	}{
		{"storage failure", errors.New("redis: connection reset"), 1, 0},
		{"bad body", Errorf(CodeInvalid, "", "bad telemetry"), 0, 1},
	}
	var nonce uint64
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kind := []string{topics.KindTelemetry, topics.KindFOTAStatus}[i]
			var first, last atomic.Int32
			done := make(chan struct{})
			h.s.Handle(kind, func(context.Context, string, envelope.Message) error { first.Add(1); return nil })
			h.s.Handle(kind, func(context.Context, string, envelope.Message) error { return tc.err })
			h.s.Handle(kind, func(context.Context, string, envelope.Message) error { last.Add(1); close(done); return nil })
			failures := testutil.ToFloat64(h.s.m.handlerErrors.WithLabelValues(kind))
			invalid := h.rejections(ReasonInvalidBody)

			nonce++
			topic := topics.DeviceUp("d1", kind)
			h.bus.Deliver(Message{Topic: topic, Payload: h.seal(k, topic, nonce, `{}`), Username: "d1"})
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the handler after the failing one never ran")
			}
			if first.Load() != 1 || last.Load() != 1 {
				t.Fatalf("handlers ran %d and %d times, want once each", first.Load(), last.Load())
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				gotF := testutil.ToFloat64(h.s.m.handlerErrors.WithLabelValues(kind)) - failures
				gotI := h.rejections(ReasonInvalidBody) - invalid
				if gotF == tc.failures && gotI == tc.invalid {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("handler errors +%v, invalid_body +%v; want +%v, +%v", gotF, gotI, tc.failures, tc.invalid)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}
