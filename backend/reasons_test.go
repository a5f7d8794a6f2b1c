package backend

import (
	"testing"

	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestEnvelopeReasonNames: the backend's metric and event names for
// envelope failures are the envelope package's (PROTOCOL.md section 6.1,
// the test vectors), and every one of them is pre-registered.
func TestEnvelopeReasonNames(t *testing.T) {
	for got, want := range map[string]string{
		ReasonMalformed: envelope.ReasonMalformed, ReasonOversized: envelope.ReasonOversized,
		ReasonBadMAC: envelope.ReasonBadMAC, ReasonDecrypt: envelope.ReasonDecrypt,
		ReasonReplay: envelope.ReasonReplay, ReasonStale: envelope.ReasonStale,
	} {
		if got != want {
			t.Errorf("backend reason %q, envelope reason %q", got, want)
		}
	}
	for _, r := range envelope.Reasons {
		found := false
		for _, a := range allReasons {
			found = found || a == r
		}
		if !found {
			t.Errorf("reason %q is not pre-registered in allReasons", r)
		}
	}
}
