package main

import (
	"errors"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"512MiB", 512 << 20}, {"2GiB", 2 << 30}, {"1048576", 1 << 20}, {"100B", 100}, {"64KiB", 64 << 10},
		{"", -1}, {"0", -1}, {"-1MiB", -1}, {"12MB", -1}, {"lots", -1}, {"99999999999TiB", -1},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseByteSize(tc.in)
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("%q accepted as %d", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("%q: %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

// TestPprofLoopbackOnly: the profiling listener opens only on loopback.
func TestPprofLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:0", true}, {"localhost:0", true}, {"[::1]:0", true},
		{":0", false}, {"0.0.0.0:0", false}, {"192.0.2.1:6060", false}, {"example.com:6060", false}, {"nonsense", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			ln, err := runtimeConfig{pprofAddr: tc.addr}.listenPprof()
			if ln != nil {
				ln.Close()
			}
			if tc.ok {
				if err != nil && tc.addr == "[::1]:0" {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var u usageError
			if !errors.As(err, &u) {
				t.Fatalf("%q: %v, want a usage error", tc.addr, err)
			}
		})
	}
	if ln, err := (runtimeConfig{}).listenPprof(); ln != nil || err != nil {
		t.Fatalf("off by default: %v %v", ln, err)
	}
}
