package fota

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		sentinel error
	}{
		{"valid", `{"fota_request":{"version":"1.0.4","chunks":[3,4,5,6]}}`, nil},
		{"full window", `{"fota_request":{"version":"1.0.4","chunks":[0,1,2,3,4,5,6,7]}}`, nil},
		{"window too large", `{"fota_request":{"version":"1.0.4","chunks":[0,1,2,3,4,5,6,7,8]}}`, ErrMalformed},
		{"no chunks", `{"fota_request":{"version":"1.0.4","chunks":[]}}`, ErrMalformed},
		{"missing chunks", `{"fota_request":{"version":"1.0.4"}}`, ErrMalformed},
		{"negative index", `{"fota_request":{"version":"1.0.4","chunks":[-1]}}`, ErrMalformed},
		{"index too large", `{"fota_request":{"version":"1.0.4","chunks":[3072]}}`, ErrMalformed},
		{"duplicate index", `{"fota_request":{"version":"1.0.4","chunks":[3,3]}}`, ErrMalformed},
		{"fractional index", `{"fota_request":{"version":"1.0.4","chunks":[1.5]}}`, ErrMalformed},
		{"bad version", `{"fota_request":{"version":"","chunks":[1]}}`, ErrMalformed},
		{"unknown field", `{"fota_request":{"version":"1.0.4","chunks":[1],"all":true}}`, ErrMalformed},
		{"missing wrapper", `{"version":"1.0.4","chunks":[1]}`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.in))
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		sentinel error
	}{
		{"downloading", `{"fota_status":{"version":"1.0.4","state":"downloading","chunk_received":12,"total_chunks":64}}`, nil},
		{"idle without version", `{"fota_status":{"version":"","state":"idle","chunk_received":0,"total_chunks":0}}`, nil},
		{"rolled back", `{"fota_status":{"version":"1.0.5","state":"rolled_back","chunk_received":64,"total_chunks":64,"reason":"boot_failed","detail":"self-test failed","running_version":"1.0.4","boot_count":3}}`, nil},
		{"unknown state", `{"fota_status":{"version":"1.0.4","state":"updating","chunk_received":0,"total_chunks":1}}`, ErrMalformed},
		{"received above total", `{"fota_status":{"version":"1.0.4","state":"downloading","chunk_received":65,"total_chunks":64}}`, ErrMalformed},
		{"negative", `{"fota_status":{"version":"1.0.4","state":"downloading","chunk_received":-1,"total_chunks":64}}`, ErrMalformed},
		{"no version while downloading", `{"fota_status":{"version":"","state":"downloading","chunk_received":0,"total_chunks":64}}`, ErrMalformed},
		{"unknown field", `{"fota_status":{"version":"1.0.4","state":"idle","chunk_received":0,"total_chunks":0,"x":1}}`, ErrMalformed},
		{"reason too long", `{"fota_status":{"version":"1.0.4","state":"failed","chunk_received":0,"total_chunks":0,"reason":"` + strings.Repeat("x", 65) + `"}}`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseStatus([]byte(tc.in))
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

func TestParseRollback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		sentinel error
	}{
		{"reason only", `{"rollback":{"reason":"operator request"}}`, nil},
		{"with version", `{"rollback":{"reason":"bad telemetry","version":"1.0.4"}}`, nil},
		{"bad version", `{"rollback":{"reason":"x","version":"1 0"}}`, ErrMalformed},
		{"null", `{"rollback":null}`, ErrMalformed},
		{"unknown field", `{"rollback":{"reason":"x","force":true}}`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRollback([]byte(tc.in))
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

func TestTransitions(t *testing.T) {
	happy := []State{StateIdle, StateDownloading, StateVerifying, StateVerified, StateRebooting, StatePendingVerify, StateSucceeded, StateDownloading}
	for i := 1; i < len(happy); i++ {
		if !CanTransition(happy[i-1], happy[i]) {
			t.Errorf("%s -> %s refused", happy[i-1], happy[i])
		}
	}
	for _, tc := range []struct {
		from, to State
		ok       bool
	}{
		{StateDownloading, StateDownloading, true},
		{StatePendingVerify, StateRebooting, true}, // a failed boot, retried
		{StatePendingVerify, StateRolledBack, true},
		{StateSucceeded, StateRolledBack, true}, // manual rollback
		{StateIdle, StateFailed, true},          // manifest refused
		{StateDownloading, StateRolledBack, false},
		{StateDownloading, StateSucceeded, false},
		{StateIdle, StateVerified, false},
		{StateVerified, StateSucceeded, false},
		{StatePendingVerify, StateFailed, false},
		{"bogus", StateIdle, false},
		{StateIdle, "bogus", false},
	} {
		if got := CanTransition(tc.from, tc.to); got != tc.ok {
			t.Errorf("CanTransition(%s, %s) = %t", tc.from, tc.to, got)
		}
	}
	for _, s := range States {
		if !s.Valid() {
			t.Errorf("%s not valid", s)
		}
	}
}

func TestReasonOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("verify: %w", ErrSignature), ReasonBadSignature},
		{fmt.Errorf("x: %w", ErrDowngrade), ReasonDowngrade},
		{fmt.Errorf("x: %w", ErrChunk), ReasonBadChunk},
		{fmt.Errorf("x: %w", ErrImageHash), ReasonHashMismatch},
		{fmt.Errorf("x: %w", ErrBadImage), ReasonBadImage},
		{fmt.Errorf("x: %w", ErrVersionMismatch), ReasonVersionMismatch},
		{fmt.Errorf("x: %w", ErrTooLarge), ReasonTooLarge},
		{fmt.Errorf("x: %w", ErrMalformed), ReasonMalformed},
		{errors.New("disk full"), ReasonOther},
	} {
		if got := ReasonOf(tc.err); got != tc.want {
			t.Errorf("ReasonOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}
