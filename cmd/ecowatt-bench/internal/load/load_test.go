package load

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		ok        bool
	}{
		{"ipv4", "tcp://127.0.0.1:1883", true},
		{"ipv4 other loopback", "mqtt://127.0.0.2:1883", true},
		{"ipv6", "tcp://[::1]:1883", true},
		{"localhost", "tcp://localhost:1883", true},
		{"remote ip", "tcp://192.0.2.1:1883", false},
		{"unspecified", "tcp://0.0.0.0:1883", false},
		{"no port", "tcp://127.0.0.1", false},
		{"websocket", "ws://127.0.0.1:1883", false},
		{"tls", "ssl://127.0.0.1:8883", false},
		{"garbage", "::", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLoopback(context.Background(), tc.url)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckLoopback(%q) = %v, want ok=%t", tc.url, err, tc.ok)
			}
			if tc.name == "remote ip" && !errors.Is(err, ErrNotLoopback) {
				t.Errorf("got %v, want ErrNotLoopback", err)
			}
		})
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	h := header{run: 0x0102030405060708, pub: 7, seq: 1 << 31, sent: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano()}
	p := encode(h, 256)
	if len(p) != 256 {
		t.Fatalf("len %d", len(p))
	}
	got, err := decode(p)
	if err != nil || got != h {
		t.Fatalf("decode = %+v, %v; want %+v", got, err, h)
	}
	if _, err := decode(p[:HeaderSize-1]); !errors.Is(err, errShortPayload) {
		t.Errorf("short payload: %v", err)
	}
}

func TestInbox(t *testing.T) {
	const run = 42
	in := newInbox(run, []int{0, 2}, 3) // expects publishers 0 and 2, 3 messages each
	msg := func(r uint64, pub, seq uint32) []byte {
		return encode(header{run: r, pub: pub, seq: seq, sent: 1000}, HeaderSize)
	}
	in.record(msg(run, 0, 0), 3000)
	in.record(msg(run, 0, 0), 3000) // duplicate
	in.record(msg(run, 0, 1), 5000)
	in.record(msg(run, 2, 2), 2000)
	in.record(msg(run+1, 0, 2), 2000) // another run
	in.record(msg(run, 1, 0), 2000)   // not expected
	in.record(msg(run, 0, 3), 2000)   // beyond count
	in.record([]byte("short"), 2000)

	// Publisher 0 sent 3, publisher 1 sent 3, publisher 2 sent only 3.
	exp, lost := in.missing([]int64{3, 3, 3})
	if exp != 6 || lost != 3 { // 0/2, 2/0, 2/1 missing
		t.Errorf("missing = %d expected, %d lost; want 6, 3", exp, lost)
	}
	// Had publisher 0 sent only 2, seq 2 would not be owed.
	if exp, lost := in.missing([]int64{2, 3, 1}); exp != 3 || lost != 1 {
		t.Errorf("missing = %d, %d; want 3, 1", exp, lost)
	}
	if in.dups != 1 || in.strays != 4 || in.got.Load() != 3 || in.lastRcv != 5000 {
		t.Errorf("dups %d strays %d got %d last %d", in.dups, in.strays, in.got.Load(), in.lastRcv)
	}
}

func TestPercentiles(t *testing.T) {
	ns := make([]int64, 100)
	for i := range ns {
		ns[i] = int64(100-i) * int64(time.Millisecond) // 100 ms .. 1 ms, unsorted
	}
	got := percentiles(ns)
	want := Latency{P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("percentiles = %+v, want %+v", got, want)
	}
	if got := percentiles(nil); got != (Latency{}) {
		t.Errorf("empty: %+v", got)
	}
}

func TestConfigBounds(t *testing.T) {
	base := func() Config {
		return Config{URL: "tcp://127.0.0.1:1", Publishers: []Publisher{{Topic: "t"}}, Size: 64, Count: 1, Duration: time.Second}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no count", func(c *Config) { c.Count = 0 }},
		{"huge count", func(c *Config) { c.Count = MaxCount + 1 }},
		{"no duration", func(c *Config) { c.Duration = 0 }},
		{"long duration", func(c *Config) { c.Duration = MaxDuration + 1 }},
		{"qos 2", func(c *Config) { c.QoS = 2 }},
		{"tiny payload", func(c *Config) { c.Size = HeaderSize - 1 }},
		{"no publishers", func(c *Config) { c.Publishers = nil }},
		{"negative rate", func(c *Config) { c.Rate = -1 }},
		{"unknown publisher", func(c *Config) { c.Subscribers = []Subscriber{{From: []int{1}}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			if _, err := Run(context.Background(), c); err == nil {
				t.Error("Run accepted an unbounded or invalid config")
			}
		})
	}
}
