package fota

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// scriptCounter counts the scripts and the other commands a client runs.
type scriptCounter struct{ scripts, other atomic.Int64 }

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			c.scripts.Add(1)
		} else if n != "script" {
			c.other.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestRequestCheckedOneScript: with the replay check and the downlink
// nonces in the serve script, a chunk request costs one script and no
// other command, its chunks carry fresh nonces the device accepts in
// order, and every replay verdict of the backend's own check holds: a
// replayed, stale or far-jumping nonce gets no chunk, and a request
// refused before the script (a bad body) still spends its nonce.
func TestRequestCheckedOneScript(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 5000, false)
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	var cnt scriptCounter
	h.Redis.AddHook(&cnt)
	req := func(nonce uint64, chunks ...int) error {
		b, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: "1.0.4", Chunks: chunks}})
		return h.svc.handleRequestChecked(h.Ctx, "d1", envelope.Message{Nonce: nonce, Body: b})
	}
	if err := req(10, 0); err != nil { // loads the script, warms the key cache
		t.Fatal(err)
	}
	s0, o0 := cnt.scripts.Load(), cnt.other.Load()
	if err := req(11, 1, 2); err != nil {
		t.Fatal(err)
	}
	if s, o := cnt.scripts.Load()-s0, cnt.other.Load()-o0; s != 1 || o != 0 {
		t.Errorf("one request ran %d scripts and %d other commands, want 1 and 0", s, o)
	}
	got := h.chunks("d1")
	if len(got) != 3 || got[1].Index != 1 || got[2].Index != 2 {
		t.Fatalf("chunks sent: %d", len(got))
	}
	// The device's window accepts every chunk nonce, in order.
	var w envelope.RankWindow
	k := h.KeysOf("d1")
	for i, m := range h.Bus.Sent(topics.DeviceDown("d1", topics.KindFOTAChunk)) {
		msg, err := envelope.OpenBinary(k, m.Topic, m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Accept(msg.Nonce); err != nil {
			t.Fatalf("chunk %d nonce %d: %v", i, msg.Nonce, err)
		}
	}

	for _, tc := range []struct {
		name  string
		nonce uint64
		want  error
	}{
		{"replayed nonce", 11, envelope.ErrReplay},
		{"stale nonce", 0, envelope.ErrStale},
		{"nonce above 2^53-1", envelope.MaxNonce + 1, envelope.ErrStale},
		{"nonce jump", 11 + backend.MaxNonceJump + 1, backend.ErrNonceJump},
	} {
		if err := req(tc.nonce, 3); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := len(h.chunks("d1")); n != 3 {
		t.Fatalf("%d chunks after refused nonces, want 3", n)
	}
	bad, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: "1.0.4", Chunks: []int{99}}})
	if err := h.svc.handleRequestChecked(h.Ctx, "d1", envelope.Message{Nonce: 12, Body: bad}); backend.ErrorCode(err) != backend.CodeInvalid {
		t.Fatalf("chunk out of range: %v, want CodeInvalid", err)
	}
	if err := req(12, 3); !errors.Is(err, envelope.ErrReplay) {
		t.Fatalf("a request on the nonce of a refused body: %v, want a replay", err)
	}
	if err := h.svc.handleRequestChecked(h.Ctx, "nobody", envelope.Message{Nonce: 13, Body: bad}); backend.ErrorCode(err) != backend.CodeNotFound {
		t.Fatalf("unknown device: %v, want CodeNotFound", err)
	}
	if err := req(13, 3, 4); err != nil || len(h.chunks("d1")) != 5 {
		t.Fatalf("next request: %v, %d chunks, want 5", err, len(h.chunks("d1")))
	}
}

// TestStatusCheckedOneScript: with the replay check in the status
// script, a fota_status costs one script (and one more when it has an
// event to append), and a
// replayed or stale nonce records nothing; a status refused before the
// script (a bad body) still spends its nonce.
func TestStatusCheckedOneScript(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 5000, false)
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	h.serveAll("d1", "1.0.4")
	var cnt scriptCounter
	h.Redis.AddHook(&cnt)
	status := func(nonce uint64, received int) error {
		b, _ := json.Marshal(wire.StatusBody{FotaStatus: &wire.Status{State: wire.StateDownloading, Version: "1.0.4",
			ChunkReceived: received, TotalChunks: 5, Running: "1.0.0"}})
		return h.svc.handleStatusChecked(h.Ctx, "d1", envelope.Message{Nonce: nonce, Body: b})
	}
	if err := status(20, 1); err != nil { // loads the script
		t.Fatal(err)
	}
	s0 := cnt.scripts.Load()
	if err := status(21, 1); err != nil { // a repeat: no event to append
		t.Fatal(err)
	}
	if s := cnt.scripts.Load() - s0; s != 1 {
		t.Errorf("one status ran %d scripts, want 1", s)
	}
	if err := status(24, 2); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		nonce uint64
		want  error
	}{
		{"replayed nonce", 24, envelope.ErrReplay},
		{"stale nonce", 0, envelope.ErrStale},
		{"nonce jump", 24 + backend.MaxNonceJump + 1, backend.ErrNonceJump},
	} {
		if err := status(tc.nonce, 4); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if f := h.fotaOf("d1"); f.Received != 2 || f.State != string(wire.StateDownloading) {
		t.Fatalf("chunks received after refused nonces: %d, want 2", f.Received)
	}
	bad := envelope.Message{Nonce: 25, Body: []byte(`{"fota_status":{"state":"exploded"}}`)}
	if err := h.svc.handleStatusChecked(h.Ctx, "d1", bad); backend.ErrorCode(err) != backend.CodeInvalid {
		t.Fatalf("bad body: %v, want CodeInvalid", err)
	}
	if err := status(25, 4); !errors.Is(err, envelope.ErrReplay) {
		t.Fatalf("a status on the nonce of a refused body: %v, want a replay", err)
	}
	if err := status(26, 5); err != nil || h.fotaOf("d1").Received != 5 {
		t.Fatalf("next status: %v, received %d, want 5", err, h.fotaOf("d1").Received)
	}
}
