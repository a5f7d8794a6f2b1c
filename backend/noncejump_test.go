package backend

import (
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestNonceJumpPoisoning: one valid uplink with nonce 2^53-1 used to move
// the high-water mark to the top, so every later genuine message was
// stale_nonce forever. A jump above MaxNonceJump is refused as nonce_jump
// (a security event, counted), changes nothing, and the device's next
// genuine nonce is accepted.
func TestNonceJumpPoisoning(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	birth := topics.DeviceUp("d1", topics.KindBirth)
	h.birth(k, "d1", 10, birthBody)

	before := h.snapshot()
	n := h.rejections(ReasonNonceJump)
	ev := h.publish("d1", topics.EventSecurity, Message{Topic: birth, Payload: h.seal(k, birth, envelope.MaxNonce, birthBody), Username: "d1"})
	var data struct{ Reason, Detail string }
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.Reason != ReasonNonceJump {
		t.Fatalf("security event reason %q (%s), want %q", data.Reason, data.Detail, ReasonNonceJump)
	}
	if got := h.rejections(ReasonNonceJump); got != n+1 {
		t.Fatalf("rejections{reason=nonce_jump} = %v, want %v", got, n+1)
	}
	h.assertUnchanged(before)
	// The genuine device carries on.
	h.birth(k, "d1", 11, birthBody)
}

// TestNonceJumpVector runs testdata/nonce_jump.json (the example of
// PROTOCOL.md) through the Redis window.
func TestNonceJumpVector(t *testing.T) {
	raw, err := os.ReadFile("testdata/nonce_jump.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		MaxJump uint64 `json:"max_jump"`
		Steps   []struct {
			Nonce  uint64 `json:"nonce"`
			Result string `json:"result"`
			High   uint64 `json:"high"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.MaxJump != MaxNonceJump {
		t.Fatalf("vector max_jump %d, MaxNonceJump %d", v.MaxJump, uint64(MaxNonceJump))
	}
	h := newHarness(t)
	h.device("d1")
	for i, st := range v.Steps {
		err := h.s.acceptNonce(h.ctx, "d1", st.Nonce)
		got := "accept"
		switch {
		case errors.Is(err, ErrNonceJump):
			got = "nonce_jump"
		case errors.Is(err, envelope.ErrStale):
			got = "stale"
		case errors.Is(err, envelope.ErrReplay):
			got = "replay"
		case err != nil:
			t.Fatalf("step %d: %v", i, err)
		}
		high, err := h.rdb.Get(h.ctx, h.s.keys.RxHigh("d1")).Uint64()
		if err != nil {
			t.Fatal(err)
		}
		if got != st.Result || high != st.High {
			t.Fatalf("step %d nonce %d: %s, high %d; want %s, high %d", i, st.Nonce, got, high, st.Result, st.High)
		}
	}
}
