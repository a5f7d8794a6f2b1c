package main

import (
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend/fota"
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

// TestFOTAChunkLimitFlags: --fota-chunk-rate and --fota-chunk-burst take
// sizes; their defaults are the fota package's, and a non-positive or
// malformed value, or a burst below one largest chunk, is a usage error
// naming the flag.
func TestFOTAChunkLimitFlags(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c fotaConfig
	c.register(fs)
	rate, burst, err := c.chunkLimits()
	if err != nil || rate != fota.DefaultChunkRate || burst != fota.DefaultChunkBurst {
		t.Fatalf("defaults: %d, %d, %v; want %d, %d", rate, burst, err, fota.DefaultChunkRate, fota.DefaultChunkBurst)
	}
	if err := fs.Parse([]string{"--fota-chunk-rate", "256KiB", "--fota-chunk-burst", "64KiB"}); err != nil {
		t.Fatal(err)
	}
	if rate, burst, err := c.chunkLimits(); err != nil || rate != 256<<10 || burst != 64<<10 {
		t.Fatalf("256KiB, 64KiB: %d, %d, %v", rate, burst, err)
	}
	for _, tc := range []struct{ rate, burst, flag string }{
		{"0", "2MiB", "--fota-chunk-rate"},
		{"fast", "2MiB", "--fota-chunk-rate"},
		{"1MiB", "-1", "--fota-chunk-burst"},
		{"1MiB", "16KiB", "--fota-chunk-burst"},
	} {
		c := fotaConfig{chunkRate: tc.rate, chunkBurst: tc.burst}
		var u usageError
		if _, _, err := c.chunkLimits(); !errors.As(err, &u) || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("rate %q burst %q: %v; want a usage error naming %s", tc.rate, tc.burst, err, tc.flag)
		}
	}
}
