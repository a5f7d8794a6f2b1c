package backend

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ecowatt/ecowatt/topics"
)

// TestUnavailable: a store failure is CodeUnavailable; a client that hung
// up (or timed out) stays a context error, never a 503 "unavailable"; an
// *Error already in the chain is kept.
func TestUnavailable(t *testing.T) {
	conflict := Errorf(CodeConflict, "state", "busy")
	cases := []struct {
		name     string
		err      error
		code     string
		isCtxErr error
	}{
		{"redis down", errors.New("dial tcp: connection refused"), CodeUnavailable, nil},
		{"client hung up", fmt.Errorf("redis: %w", context.Canceled), CodeInternal, context.Canceled},
		{"deadline", context.DeadlineExceeded, CodeInternal, context.DeadlineExceeded},
		{"already an Error", conflict, CodeConflict, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Unavailable("load thing", tc.err)
			if got := ErrorCode(err); got != tc.code {
				t.Fatalf("code %q, want %q (%v)", got, tc.code, err)
			}
			if tc.isCtxErr != nil && !errors.Is(err, tc.isCtxErr) {
				t.Fatalf("%v does not match %v", err, tc.isCtxErr)
			}
		})
	}
	// Through a real Redis call: a cancelled request is not a store outage.
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.s.Device(ctx, "d1")
	if ErrorCode(err) == CodeUnavailable || !errors.Is(err, context.Canceled) {
		t.Fatalf("Device with a cancelled context: %v (code %s), want context.Canceled", err, ErrorCode(err))
	}
}

// TestInvalid: validation errors become CodeInvalid naming the field.
func TestInvalid(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		field, msg string
	}{
		{"one field", &topics.FieldError{Field: "value", Reason: "out of range"}, "value", "value: out of range"},
		{"whole document", &topics.FieldError{Reason: "not JSON"}, "", "not JSON"},
		{"several", topics.FieldErrors{{Field: "a", Reason: "bad"}, {Field: "b", Reason: "worse"}}, "a", "a: bad; b: worse"},
		{"plain error", errors.New("nope"), "", "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Invalid(tc.err)
			msg, field := ErrorMessage(err)
			if ErrorCode(err) != CodeInvalid || field != tc.field || msg != tc.msg || errors.Unwrap(err) == nil {
				t.Fatalf("Invalid(%v) = %v: code %s field %q msg %q", tc.err, err, ErrorCode(err), field, msg)
			}
		})
	}
}
