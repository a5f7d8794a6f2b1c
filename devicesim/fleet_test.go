package devicesim

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFleet(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	keys := map[string][]byte{}
	for i := range 20 {
		keys[fmt.Sprintf("fleet-%02d", i)] = testKey(byte(10 + i))
	}
	var mu sync.Mutex // guards progress
	var progress []FleetStatus
	setups := 0
	f, err := NewFleet(FleetConfig{
		Keys:      keys,
		StateRoot: t.TempDir(),
		Device: Config{
			Broker:     b.url(),
			Log:        testLogger(t),
			MinBackoff: 20 * time.Millisecond,
			MaxBackoff: 200 * time.Millisecond,
		},
		MaxConnecting:    4,
		StartSpread:      200 * time.Millisecond,
		ProgressInterval: 20 * time.Millisecond,
		Setup:            func(*Device) error { setups++; return nil },
		Progress: func(s FleetStatus) {
			mu.Lock()
			progress = append(progress, s)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if setups != 20 {
		t.Fatalf("Setup ran %d times", setups)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	eventually(t, "20 online", func() bool { return f.Status().Online == 20 })
	for id, k := range keys {
		if n := len(b.signedBirths(id, mustKeys(t, k))); n != 1 {
			t.Errorf("%s: %d births", id, n)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fleet did not stop within 5 s")
	}
	s := f.Status()
	if s.Online != 0 || s.Connects != 20 || s.Sent < 40 || s.Total != 20 {
		t.Errorf("final status = %+v", s)
	}
	mu.Lock()
	last := progress[len(progress)-1]
	mu.Unlock()
	if last.Online != 0 || last.Total != 20 {
		t.Errorf("last progress = %+v", last)
	}
	checkNoLeak(t)
}

func TestLoadKeys(t *testing.T) {
	good := hex.EncodeToString(testKey(1))
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"ok", `{"a-1":"` + good + `","b_2":"` + good + `"}`, true},
		{"bad id", `{"a/1":"` + good + `"}`, false},
		{"short key", `{"a":"abcd"}`, false},
		{"not hex", `{"a":"` + strings.Repeat("zz", 32) + `"}`, false},
		{"empty", `{}`, false},
		{"not json", `[`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := LoadKeys(strings.NewReader(tc.in))
			if (err == nil) != tc.ok {
				t.Fatalf("LoadKeys = %v, %v", k, err)
			}
		})
	}
}
