package authhttp

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/ecowatt/ecowatt/broker"
)

// TestLoginThrottle: the callbacks throttle failed logins like the
// embedded broker — by EMQX's peerhost and by operator name — while a
// device name and the backend's own account are never locked.
func TestLoginThrottle(t *testing.T) {
	r := newRig(t)
	emqx := func(t *testing.T, peer, user, pass, cid string) string {
		t.Helper()
		body := map[string]string{"username": user, "password": pass, "clientid": cid}
		if peer != "" {
			body["peerhost"] = peer
		}
		code, out := r.postJSON(t, "/mqtt/emqx/authn", body)
		if code != 200 {
			t.Fatalf("status %d", code)
		}
		return fmt.Sprint(out["result"])
	}
	lastReason := func() string {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.rejects) == 0 {
			return ""
		}
		return r.rejects[len(r.rejects)-1].Reason
	}
	free := broker.DefaultAddressThrottle.Free
	token := func(id string) string { // valid at the callbacks' clock
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.token(id, r.at)
	}

	t.Run("address", func(t *testing.T) {
		const bad, good = "10.0.0.9", "10.0.0.10"
		for i := range free + 1 {
			if got := emqx(t, bad, "mallory", "x", "m"); got != "deny" || lastReason() == broker.ReasonThrottled {
				t.Fatalf("failure %d: %s %s, want a checked deny", i+1, got, lastReason())
			}
		}
		// Locked: even a valid device login from that address is refused
		// before any check; another address is not.
		if got := emqx(t, bad, "dev-1", token("dev-1"), "dev-1"); got != "deny" || lastReason() != broker.ReasonThrottled {
			t.Fatalf("locked address: %s %s, want deny throttled", got, lastReason())
		}
		if got := emqx(t, good, "dev-1", token("dev-1"), "dev-1"); got != "allow" {
			t.Fatalf("another address: %s, want allow", got)
		}
		r.advance(broker.DefaultAddressThrottle.Base)
		if got := emqx(t, bad, "dev-1", token("dev-1"), "dev-1"); got != "allow" {
			t.Fatalf("after the delay: %s, want allow", got)
		}
		r.advance(broker.DefaultAddressThrottle.Forget) // forget the address for the next subtests
	})

	t.Run("operator name", func(t *testing.T) {
		// mosquitto-go-auth sends no address: the name alone counts.
		form := func(pass string) int {
			return r.postForm(t, "/mqtt/mosquitto/user", url.Values{"username": {"alice"}, "password": {pass}, "clientid": {"alice-1"}})
		}
		for i := range broker.DefaultOperatorThrottle.Free + 1 {
			if code := form("guess"); code != 403 || lastReason() == broker.ReasonThrottled {
				t.Fatalf("failure %d: %d %s, want a checked 403", i+1, code, lastReason())
			}
		}
		if code := form("alice-pw"); code != 403 || lastReason() != broker.ReasonThrottled {
			t.Fatalf("locked name, right password: %d %s, want 403 throttled", code, lastReason())
		}
		if got := emqx(t, "10.0.0.11", "victor", "victor-pw", "victor-1"); got != "allow" {
			t.Fatalf("another operator: %s, want allow", got)
		}
		r.advance(broker.DefaultOperatorThrottle.Base)
		if code := form("alice-pw"); code != 200 {
			t.Fatalf("after the delay: %d, want 200", code)
		}
		// The success cleared the name: one more failure is checked, not locked.
		if code := form("guess"); code != 403 || lastReason() == broker.ReasonThrottled {
			t.Fatalf("after a success: %d %s, want a checked 403", code, lastReason())
		}
	})

	t.Run("device and backend names are never locked", func(t *testing.T) {
		for range 3 * free {
			emqx(t, "", "dev-2", token("dev-1"), "dev-2")
			emqx(t, "", "ecowatt-backend", "guess", "ecowatt-r1")
		}
		if got := emqx(t, "", "dev-2", token("dev-2"), "dev-2"); got != "allow" {
			t.Fatalf("device after bad tokens: %s, want allow", got)
		}
		if got := emqx(t, "", "ecowatt-backend", "backend-secret", "ecowatt-r1"); got != "allow" {
			t.Fatalf("backend account after wrong passwords: %s, want allow", got)
		}
		// A wrong backend password still counts against its address.
		for range free + 1 {
			emqx(t, "10.0.0.12", "ecowatt-backend", "guess", "ecowatt-r1")
		}
		if got := emqx(t, "10.0.0.12", "ecowatt-backend", "backend-secret", "ecowatt-r1"); got != "deny" || lastReason() != broker.ReasonThrottled {
			t.Fatalf("backend password from a locked address: %s %s, want deny throttled", got, lastReason())
		}
	})
}
